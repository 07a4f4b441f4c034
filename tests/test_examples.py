"""Every example script runs end to end on a few hundred MNIST images."""
import csv
import json
import subprocess
import sys

import pytest

from conftest import REPO

METRIC_KEYS = {"epochs", "steps", "train_seconds", "train_elbo", "test_elbo", "test_log_px",
               "test_log_px_stderr", "eval_samples", "n_test", "psis_khat_max", "config",
               "versions", "kl_per_dim", "active_units"}
FLAGS = {"data_dir", "out", "epochs", "batch_size", "lr", "z_dim", "hidden_dims", "seed", "device",
         "train_subset", "test_subset", "eval_samples", "resume", "prior", "guide", "likelihood",
         "loss", "num_particles", "beta", "beta_warmup_epochs"}


def run(script, *args):
    return subprocess.run([sys.executable, str(REPO / "examples" / script), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


def pvae_cli(*args):
    return subprocess.run([sys.executable, "-m", "pvae", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


def test_mnist_svi_writes_metrics_and_figures(mnist_dir, tmp_path):
    out = tmp_path / "run"
    done = run("mnist_svi.py", "--data-dir", mnist_dir, "--out", out, "--epochs", 1,
               "--train-subset", 300, "--test-subset", 100, "--eval-samples", 50,
               "--hidden-dims", 64, "--z-dim", 8, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test log p(x)" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert FLAGS <= set(metrics["config"])
    assert metrics["n_test"] == 100 and metrics["eval_samples"] == 50 and metrics["epochs"] == 1
    assert metrics["steps"] == 3 and metrics["train_seconds"] > 0
    assert -784 * 0.7 < metrics["test_elbo"] <= metrics["test_log_px"] < 0
    assert 0 < metrics["test_log_px_stderr"] < 20
    assert set(metrics["versions"]) >= {"python", "torch", "pyro"}
    assert len(metrics["kl_per_dim"]) == 8 and 0 <= metrics["active_units"] <= 8
    for name in ("reconstructions", "samples", "latent", "elbo_curves", "evaluation",
                 "traversals", "kl_per_dim"):
        assert (out / f"{name}.png").stat().st_size > 5000, name
    assert (out / "checkpoint.pt").is_file()

    ckpt = out / "checkpoint.pt"
    for args in (["evaluate", "--checkpoint", ckpt, "--num-samples", 30, "--test-subset", 40,
                  "--out", out / "eval"],
                 ["evaluate", "--checkpoint", ckpt, "--num-samples", 30, "--test-subset", 10,
                  "--proposal", "refined", "--out", out / "refined"],
                 ["evaluate", "--checkpoint", ckpt, "--method", "ais", "--ais-steps", 5,
                  "--ais-chains", 3, "--ais-leapfrog", 2, "--test-subset", 6, "--out", out / "ais"],
                 ["evaluate", "--checkpoint", ckpt, "--method", "bdmc", "--ais-steps", 5,
                  "--ais-chains", 3, "--ais-leapfrog", 2, "--test-subset", 6, "--out", out / "ais"],
                 ["gap", "--checkpoint", ckpt, "--out", out / "gap", "--test-subset", 8,
                  "--num-samples", 40, "--elbo-samples", 20, "--max-steps", 40],
                 ["plot", "--checkpoint", ckpt, "--out", out / "plots", "--test-subset", 50]):
        done = pvae_cli(*args, "--data-dir", mnist_dir)
        assert done.returncode == 0, (args[0], done.stderr[-3000:])
    assert json.loads((out / "eval" / "metrics_is.json").read_text())["n_test"] == 40
    refined = json.loads((out / "refined" / "metrics_is.json").read_text())
    assert refined["eval_proposal"] == "refined" and refined["n_test"] == 10
    annealed = json.loads((out / "ais" / "metrics_ais.json").read_text())
    assert annealed["ais_n_test"] == 6 and annealed["ais_steps"] == 5
    assert -784 * 0.7 < annealed["test_log_px_ais"] < 0
    sandwich = json.loads((out / "ais" / "metrics_bdmc.json").read_text())
    assert sandwich["bdmc_n"] == 6 and sandwich["bdmc_lower"] < 0 and sandwich["bdmc_upper"] < 0
    assert (out / "ais" / "ais.png").is_file() and (out / "ais" / "bdmc.png").is_file()
    gap = json.loads((out / "gap" / "gap.json").read_text())
    assert gap["n"] == 8
    assert gap["elbo_amortized"] <= gap["elbo_local"] + 3 * gap["elbo_local_stderr"] + 1
    assert (out / "plots" / "latent.png").is_file()

    resumed = run("mnist_svi.py", "--data-dir", mnist_dir, "--out", out, "--epochs", 2,
                  "--train-subset", 300, "--test-subset", 100, "--eval-samples", 50,
                  "--hidden-dims", 64, "--z-dim", 8, "--device", "cpu", "--resume",
                  "--method", "bdmc", "--ais-steps", 4, "--ais-chains", 3, "--ais-leapfrog", 2,
                  "--ais-subset", 5)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "AIS T=4, C=3" in resumed.stdout and "BDMC gap" in resumed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["ais_n_test"] == 5 and metrics["bdmc_n"] == 5
    assert metrics["config"]["method"] == "bdmc" and (out / "ais.png").is_file()


def test_a_model_trained_without_an_encoder_is_scored_on_new_images_end_to_end(mnist_dir,
                                                                             tmp_path):
    """The local guide's test numbers come from a q* fitted to each test image: the main job's
    metrics, pvae evaluate (IS and AIS) and pvae gap (approximation gap only) on its checkpoint,
    and a pvae compare of the three guides fills every row."""
    out = tmp_path / "local"
    done = run("mnist_svi.py", "--data-dir", mnist_dir, "--out", out, "--epochs", 2,
               "--train-subset", 200, "--test-subset", 20, "--hidden-dims", 32, "--z-dim", 4,
               "--guide", "local", "--device", "cpu", "--eval-samples", 30, "--local-seconds", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and -784 < metrics["train_elbo"] < 0
    assert metrics["eval_proposal"] == "local" and metrics["eval_fit_steps"] > 0
    assert -784 < metrics["test_elbo"] <= metrics["test_log_px"] + 1.0 < 1.0
    assert metrics["eval_fit_seconds_per_image"] > 0 and (out / "evaluation.png").is_file()
    ckpt, data = ["--checkpoint", out / "checkpoint.pt"], ["--data-dir", mnist_dir]
    done = pvae_cli("evaluate", *ckpt, *data, "--method", "ais", "--ais-steps", 5,
                    "--ais-chains", 3, "--ais-leapfrog", 2, "--test-subset", 4)
    assert done.returncode == 0, done.stderr[-3000:]
    assert -784 < json.loads((out / "eval" / "metrics_ais.json").read_text())["test_log_px_ais"] < 0
    done = pvae_cli("gap", *ckpt, *data, "--out", tmp_path / "gap", "--test-subset", 4,
                    "--num-samples", 30, "--max-steps", 40)
    assert done.returncode == 0 and "trained without an encoder" in done.stdout, done.stderr
    gap = json.loads((tmp_path / "gap" / "gap.json").read_text())
    assert gap["amortization_gap"] is None and gap["approximation_gap"] > 0
    done = run("compare.py", "--data-dir", mnist_dir, "--out", tmp_path / "cmp", "--configs",
               "guide=mlp", "guide=semi,refine_steps=2", "guide=local", "--epochs", 1,
               "--train-subset", 200, "--test-subset", 20, "--eval-samples", 30, "--hidden-dims",
               16, "--z-dim", 3, "--device", "cpu", "--local-seconds", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").read_text().splitlines()))
    assert all(r["test_log_px"] and float(r["test_log_px"]) < 0 for r in rows), rows


@pytest.mark.parametrize("args, message", [
    (["--prior", "nope"], "invalid choice: 'nope'"),
    (["--epochs", "0"], "must be at least 1"),
    (["--beta", "-1"], "finite number >= 0"),
    (["--lr", "abc"], "expected a number"),
])
def test_nonsensical_flags_get_one_clear_error(args, message):
    done = run("mnist_svi.py", *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_unwritable_out_is_one_line(tmp_path, mnist_dir):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run("mnist_svi.py", "--data-dir", mnist_dir, "--out", blocker / "x", "--epochs", 1)
    assert done.returncode == 2
    assert "cannot write to" in done.stderr and "Traceback" not in done.stderr
    assert not (blocker.parent / "x").exists()


def test_resume_from_a_corrupt_checkpoint_is_one_line(tmp_path, mnist_dir):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    done = run("mnist_svi.py", "--data-dir", mnist_dir, "--out", tmp_path, "--epochs", 1,
               "--train-subset", 100, "--resume")
    assert done.returncode == 2
    assert "corrupt" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_compare_writes_one_table_for_several_configurations(mnist_dir, tmp_path):
    done = run("compare.py", "--data-dir", mnist_dir, "--out", tmp_path, "--configs",
               "prior=standard", "prior=mog,num_components=3,epochs=2", "stochastic_layers=2",
               "--epochs", 1, "--train-subset", 300, "--test-subset", 100, "--eval-samples", 20,
               "--hidden-dims", 32, "--z-dim", 4, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "compare.md").read_text()
    assert "prior=mog" in table and "prior=standard" in table
    rows = (tmp_path / "compare.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and rows[3].startswith("stochastic_layers=2,")
    csv_rows = list(csv.DictReader(rows))  # a row's own epochs, and its CPU time, are reported
    assert [int(r["epochs"]) for r in csv_rows] == [1, 2, 1]
    assert all(float(r["train_cpu_seconds"]) > 0 for r in csv_rows)
    assert "the epochs of each row" in table
    assert list(tmp_path.glob("*.png"))

    two = tmp_path / "stochastic_layers-2"  # two stochastic layers: trained, read back, scored
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["config"]["stochastic_layers"] == 2
    assert metrics["test_elbo"] <= metrics["test_log_px"] < 0
    assert (two / "samples.png").is_file() and (two / "latent.png").is_file()
    done = pvae_cli("evaluate", "--checkpoint", two / "checkpoint.pt", "--num-samples", 10,
                    "--test-subset", 10, "--out", tmp_path / "eval", "--data-dir", mnist_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics_is.json").read_text())["n_test"] == 10
    done = pvae_cli("gap", "--checkpoint", two / "checkpoint.pt", "--out", tmp_path / "gap",
                    "--test-subset", 2, "--data-dir", mnist_dir)
    assert done.returncode == 2 and done.stderr.startswith("error:") and "two" in done.stderr


def test_custom_prior_registers_trains_and_evaluates_with_its_own_flag(mnist_dir, tmp_path):
    out = tmp_path / "student"
    done = run("custom_prior.py", "--data-dir", mnist_dir, "--out", out, "--epochs", 1,
               "--train-subset", 200, "--test-subset", 30, "--eval-samples", 30,
               "--hidden-dims", 16, "--z-dim", 3, "--device", "cpu", "--df", 2.5)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["prior"] == "student" and metrics["config"]["options"] == {"df": 2.5}
    assert -784 < metrics["test_elbo"] <= metrics["test_log_px"] < 0
    assert "StudentT(df=2.5)" in done.stdout
    assert "--df" in run("custom_prior.py", "--help").stdout
