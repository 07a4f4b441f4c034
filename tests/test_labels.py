"""Labels: the conditional VAE and the semi-supervised M2 model, their data, training and runs."""
import json
import math
import subprocess
import sys

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

from conftest import REPO
from pvae import build_vae, fit, load, load_dataset
from pvae.data.dataset import UNLABELLED, keep_labels
from pvae.errors import CheckpointError, DataError
from pvae.evaluate import ais, importance_sampling, log_likelihood
from pvae.infer.logweights import check_pair, log_weights
from pvae.infer.objectives import make_loss
from pvae.runs.labels import cluster_accuracy, given_y
from pvae.training.batches import epoch_batches, labelled_scale
from pvae.training.config import TrainConfig
from pvae.training.step import batch_loss


def tiny(supervision="semi", **kw):
    torch.manual_seed(0)
    return build_vae(z_dim=3, hidden_dims=(8,), x_dim=12, supervision=supervision,
                     num_classes=4, **kw)


def binary(n=6, seed=0):
    return torch.bernoulli(torch.full((n, 12), 0.4), generator=torch.Generator().manual_seed(seed))


Y = torch.tensor([0, 1, 2, 3, 0, 1])


def sites(fn, *args, **kwargs):
    tr = poutine.trace(fn).get_trace(*args, **kwargs)
    return {n: s for n, s in tr.nodes.items() if s["type"] == "sample"
            and not site_is_subsample(s)}


def test_m2_samples_y_in_the_data_plate_enumerated_where_unlabelled_observed_where_given():
    vae, x = tiny(), binary()
    guide = sites(vae.guide, x)
    assert list(guide) == ["y", "z"] and guide["y"]["infer"] == {"enumerate": "parallel"}
    assert guide["y"]["fn"].batch_shape == (6,) and guide["z"]["fn"].batch_shape == (6,)
    model = sites(vae.model, x, y=Y)
    assert list(model) == ["z", "y", "x"] and model["y"]["is_observed"]
    assert torch.equal(model["y"]["value"], Y)
    assert torch.allclose(model["y"]["fn"].probs, torch.full((6, 4), 0.25))
    assert all([f.name for f in s["cond_indep_stack"]] == ["data"] for s in model.values())
    assert list(sites(vae.guide, x, y=Y)) == ["z"]  # y given: the guide samples z only


def test_the_conditional_vae_reads_y_and_has_no_y_site():
    vae, x = tiny("conditional"), binary()
    assert list(sites(vae.model, x, y=Y)) == ["z", "x"] and vae.classifier is None
    assert vae.q.net.body[0].in_features == 12 + 4
    assert vae.likelihood.decoder[0].in_features == 3 + 4
    with pytest.raises(Exception, match="needs the labels; pass y="):
        vae.model(x)


def test_the_labelled_loss_is_the_elbo_plus_alpha_times_the_classifiers_loss():
    vae, x = tiny(alpha=7.0), binary()
    loss = batch_loss(vae, make_loss("elbo", 1, enumerated=True))
    pyro.set_rng_seed(3)
    got = loss(x, y=Y)
    pyro.set_rng_seed(3)
    elbo = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, y=Y)
    ce = -vae.classifier(x).log_prob(Y).sum()
    assert got.item() == pytest.approx((elbo + 7.0 * ce).item(), rel=1e-6)
    pyro.set_rng_seed(3)
    mixed = loss(x[:3], labelled=(x[3:], Y[3:]), labelled_scale=0.25)
    pyro.set_rng_seed(3)
    enum = make_loss("elbo", 1, enumerated=True).differentiable_loss(vae.model, vae.guide, x[:3])
    part = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x[3:], y=Y[3:])
    ce = -vae.classifier(x[3:]).log_prob(Y[3:]).sum()
    assert mixed.item() == pytest.approx((enum + 0.25 * (part + 7.0 * ce)).item(), rel=1e-6)


def test_a_semi_supervised_epoch_sees_each_unlabelled_image_once_and_labelled_ones_each_step():
    x, y = torch.rand(23, 12), torch.full((23,), UNLABELLED)
    y[[2, 5, 11, 17, 19]] = torch.tensor([0, 1, 2, 3, 0])
    settings = TrainConfig(batch_size=4, seed=1, binarize=False)
    batches, steps = epoch_batches(x, y, settings, 1, "semi")
    batches = list(batches)
    assert steps == len(batches) == 5  # ceil(18 / 4)
    seen = torch.cat([args[0] for args, _ in batches])
    unlabelled = x[y < 0]
    assert seen.shape == unlabelled.shape
    assert torch.equal(seen[seen[:, 0].argsort()], unlabelled[unlabelled[:, 0].argsort()])
    for args, kwargs in batches:
        xl, yl = kwargs["labelled"]
        assert xl.shape == (4, 12) and bool((yl >= 0).all())
        assert all(any(torch.equal(r, x[i]) and int(y[i]) == int(c) for i in range(23))
                   for r, c in zip(xl, yl))
        assert kwargs["labelled_scale"] == pytest.approx((5 / 4) / (18 / 4))
    assert labelled_scale(100, 100, 59900, 100) == pytest.approx(1 / 599)


def test_keep_labels_is_balanced_seeded_and_refuses_a_class_too_small():
    y = torch.arange(100) % 4
    kept = keep_labels(y, 10, 4, seed=0)
    assert torch.bincount(kept[kept >= 0], minlength=4).tolist() == [3, 3, 2, 2]
    assert bool((kept[kept >= 0] == y[kept >= 0]).all()) and int((kept < 0).sum()) == 90
    assert torch.equal(kept, keep_labels(y, 10, 4, seed=0))
    assert not torch.equal(kept, keep_labels(y, 10, 4, seed=1))
    assert torch.equal(keep_labels(y, 100, 4), y) and int((keep_labels(y, 0, 4) >= 0).sum()) == 0
    with pytest.raises(DataError, match="keeps 30 labels of class 1.*only 25.*--labelled 100"):
        keep_labels(torch.cat([y, torch.zeros(30, dtype=torch.long)]), 120, 4)


def test_labels_come_from_npz_files_and_class_folders(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 4, 4)).astype(np.uint8)
    np.savez(tmp_path / "a.npz", train=pixels[:20], test=pixels[20:],
             train_y=np.arange(20) % 3, test_y=np.arange(10) % 3)
    a = load_dataset(str(tmp_path / "a.npz"))
    assert a.num_classes == 3 and a.train_y.tolist() == (np.arange(20) % 3).tolist()
    np.savez(tmp_path / "b.npz", x=pixels, y=np.arange(30) % 5)
    b = load_dataset(str(tmp_path / "b.npz"))
    assert b.num_classes == 5 and len(b.test_y) == 3
    assert sorted(torch.cat([b.train_y, b.test_y]).tolist()) == sorted((np.arange(30) % 5).tolist())
    np.save(tmp_path / "c.npy", pixels)
    c = load_dataset(str(tmp_path / "c.npy"))
    assert c.num_classes == 0 and not bool(c.train_y.any())


def test_fit_with_labels_resumes_only_on_the_same_labels(tmp_path):
    x, y = binary(40), torch.arange(40) % 4
    vae = tiny("conditional")
    fit(vae, x, y=y, epochs=1, batch_size=10, device="cpu", progress=False, seed=0,
        out_dir=tmp_path, test_x=x[:8], test_y=y[:8])
    again = tiny("conditional")
    with pytest.raises(CheckpointError, match="images are the same but their labels differ"):
        fit(again, x, y=(y + 1) % 4, epochs=2, batch_size=10, device="cpu", progress=False,
            out_dir=tmp_path, resume=True, test_x=x[:8], test_y=y[:8])
    back = load(tmp_path / "checkpoint.pt")
    assert back.supervision == "conditional" and back.num_classes == 4
    assert torch.equal(back.q.net.body[0].weight, vae.q.net.body[0].weight)


def test_the_log_weights_with_y_unobserved_are_those_of_each_class_summed_draw_for_draw():
    """Same random stream: the sum over y conditions on y = 0, 1, ... in turn, as the calls
    with each class given do one after the other."""
    vae, x = tiny(), binary(5)
    summed_structure = check_pair(vae.model, vae.guide, x)
    assert [name for name, _ in summed_structure.enumerated] == ["y"]
    plain = check_pair(vae.model, vae.guide, x, y=Y[:5])
    assert plain.enumerated == ()
    pyro.set_rng_seed(5)
    summed = log_weights(vae.model, vae.guide, x, 300, structure=summed_structure)
    pyro.set_rng_seed(5)
    by_class = torch.stack([log_weights(vae.model, vae.guide, x, 300, structure=plain,
                                        y=torch.full((5,), c)) for c in range(4)])
    assert summed.shape == (300, 5)
    assert torch.allclose(summed, by_class.logsumexp(0), atol=1e-9)


def test_the_estimators_take_the_labels_and_sum_an_unobserved_y():
    vae, x = tiny(), binary(5)
    summed = log_likelihood(vae.model, vae.guide, x, num_samples=20000, host=vae)
    joint = importance_sampling(vae.model, vae.guide, x, num_samples=30, y=Y[:5], host=vae,
                                progress=False)
    assert np.all(joint.log_px < summed.numpy())  # log p(x, y) < log p(x)
    annealed = ais(vae.model, vae.guide, x, num_steps=100, num_chains=16, num_leapfrog=3)
    assert annealed.log_weights.shape == (5, 16)
    assert float((annealed.log_px - summed).mean()) == pytest.approx(0.0, abs=0.05)
    with pytest.raises(DataError, match="must lie in 0 … 3"):
        log_likelihood(vae.model, vae.guide, x, num_samples=2, y=torch.full((5,), -1), host=vae)


def test_cluster_accuracy_matches_clusters_to_classes_one_to_one():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    assert cluster_accuracy((y + 1) % 3, y, 3) == 1.0
    assert cluster_accuracy(np.array([1, 1, 0, 2, 2, 2, 2]), y, 3) == pytest.approx(6 / 7)
    assert given_y({"test_log_px": 1.0, "test_log_px_stderr": 0.1, "n_test": 3}) == {
        "test_log_px_given_y": 1.0, "test_log_px_given_y_stderr": 0.1, "n_test": 3}


def pvae(*args):
    return subprocess.run([sys.executable, "-m", "pvae", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


SMALL = ["--epochs", 1, "--train-subset", 200, "--test-subset", 30, "--eval-samples", 25,
         "--hidden-dims", 16, "--z-dim", 4, "--device", "cpu", "--no-progress"]


def test_semi_and_conditional_runs_end_to_end_and_evaluate_without_flags(mnist_dir, tmp_path):
    out = tmp_path / "semi"
    done = pvae("train", "--data-dir", mnist_dir, "--out", out, *SMALL, "--supervision", "semi",
                "--labelled", 20)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_labelled"] == 20 and m["labelled_per_class"] == [2] * 10
    assert m["config"]["labelled"] == 20 and m["config"]["labelled_seed"] == 0
    assert m["config"]["supervision"] == "semi" and m["config"]["num_classes"] == 10
    assert 0 <= m["test_accuracy"] <= m["test_cluster_accuracy"] <= 1
    assert m["test_log_px"] < 0 and math.isfinite(m["test_log_px_stderr"])
    assert (out / "conditional_samples.png").is_file() and "test accuracy" in done.stdout
    done = pvae("evaluate", "--checkpoint", out / "checkpoint.pt", "--num-samples", 25,
                "--no-progress", "--test-subset", 30)
    assert done.returncode == 0, done.stderr[-3000:]
    e = json.loads((out / "eval" / "metrics_is.json").read_text())
    assert e["n_test"] == 30 and e["test_accuracy"] == m["test_accuracy"]
    cond = tmp_path / "cond"
    done = pvae("train", "--data-dir", mnist_dir, "--out", cond, *SMALL, "--supervision",
                "conditional")
    assert done.returncode == 0, done.stderr[-3000:]
    c = json.loads((cond / "metrics.json").read_text())
    assert "test_log_px" not in c and c["test_log_px_given_y"] < 0
    assert c["test_elbo_given_y"] <= c["test_log_px_given_y"] + 1
    assert "test log p(x|y), K=25" in done.stdout
    done = pvae("evaluate", "--checkpoint", cond / "checkpoint.pt", "--num-samples", 25,
                "--no-progress", "--method", "ais", "--ais-steps", 3, "--ais-chains", 2,
                "--test-subset", 3)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test_log_px_given_y_ais" in json.loads((cond / "eval" / "metrics_ais.json")
                                                   .read_text())


def test_compare_rows_may_differ_in_supervision(mnist_dir, tmp_path):
    done = pvae("compare", "--data-dir", mnist_dir, "--out", tmp_path, *SMALL, "--configs",
                "supervision=none", "supervision=semi,labelled=20", "supervision=conditional")
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "compare.md").read_text()
    assert "test accuracy |" in table and "A conditional row models p(x|y)" in table
    rows = [line for line in table.splitlines() if line.startswith("| supervision")]
    assert "%" in rows[1] and "n/a" in rows[0].split("|")[-2]


def test_the_m2_step_benchmark_runs_and_enumeration_costs_more_than_one_class():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "m2_step.py"), "--quick"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[2].strip(): line for line in done.stdout.splitlines()
            if line.startswith("| 100 |")}
    assert sorted(rows) == ["m2", "m2-torch", "vae"]
    assert float(rows["m2"].split("|")[4].split()[0]) > 2  # ten decoder passes against one
