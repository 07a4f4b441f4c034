"""Uses of a trained VAE: outlier scores (AUROC, AUPRC, FPR at 95% TPR, the PNG complexity
correction, the built-in shifts), the latent space (KL per coordinate, active units,
traversals), dSprites and the disentanglement scores, each against a known answer."""
import json
import math
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

from conftest import REPO
from pvae import build_vae
from pvae.data import dsprites, load_dataset
from pvae.data.registry import parse_classes
from pvae.errors import ConfigError, DataError
from pvae.runs import disentanglement as dis
from pvae.runs import outliers
from pvae.runs.latents import ACTIVE_THRESHOLD, latent_report, traversals


def brute_auroc(neg, pos):
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])


def brute_ap(neg, pos):
    scores = np.r_[neg, pos]
    total = 0.0
    previous_recall = 0.0
    for t in sorted(set(scores), reverse=True):
        flagged = scores >= t
        tp = flagged[len(neg):].sum()
        recall, precision = tp / len(pos), tp / flagged.sum()
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


def test_two_identical_sets_give_auroc_one_half_and_two_draws_of_one_law_one_half_within_noise():
    rng = np.random.default_rng(0)
    same = rng.normal(size=500)
    assert outliers.auroc(same, same) == 0.5
    a, b = rng.normal(size=2000), rng.normal(size=2000)
    se = math.sqrt((len(a) + len(b) + 1) / (12 * len(a) * len(b)))  # the null s.d. of AUROC
    assert abs(outliers.auroc(a, b) - 0.5) < 3 * se
    assert outliers.auroc(a, a + 100) == 1.0 and outliers.auroc(a + 100, a) == 0.0


def test_auroc_and_average_precision_match_their_definitions_with_ties():
    rng = np.random.default_rng(1)
    neg, pos = rng.integers(0, 6, 40).astype(float), rng.integers(2, 9, 30).astype(float)
    assert outliers.auroc(neg, pos) == pytest.approx(brute_auroc(neg, pos), abs=1e-12)
    assert outliers.auprc(neg, pos) == pytest.approx(brute_ap(neg, pos), abs=1e-12)
    assert outliers.auprc(neg, neg + 100) == 1.0


def test_fpr_at_95_tpr_uses_the_threshold_that_flags_95_percent_of_the_positives():
    pos = np.arange(100.0)  # flagging 95 of them needs threshold 5
    neg = np.array([4.0, 5.0, 6.0, 200.0])
    assert outliers.fpr_at_tpr(neg, pos) == 0.75
    assert outliers.fpr_at_tpr(np.zeros(10), pos + 1) == 0.0


def test_png_length_grows_with_the_image_s_complexity():
    blank, noise = torch.zeros(1, 784), torch.bernoulli(torch.full((1, 784), 0.5))
    bits = outliers.complexity_bits(torch.cat([blank, noise, blank]), (28, 28))
    assert bits[0] == bits[2] and bits[0] % 8 == 0
    assert bits[1] > bits[0] + 8 * 60  # 784 random bits need about 98 bytes more than a blank


def test_the_shifts_are_what_they_say():
    x = torch.rand(5, 12)
    assert torch.equal(outliers.shift(x, "inverted", (3, 4)), 1 - x)
    noisy = outliers.shift(x, "noise", (3, 4))
    assert torch.equal(noisy, outliers.shift(x, "noise", (3, 4))) and 0 <= noisy.min()
    assert noisy.max() <= 1 and 0.1 < (noisy - x).abs().mean() < 0.3
    square = torch.arange(2 * 9.0).reshape(2, 9)
    turned = outliers.shift(square, "rotated", (3, 3))
    assert turned[0].tolist() == [2, 5, 8, 1, 4, 7, 0, 3, 6]  # rot90 counter-clockwise
    four = square
    for _ in range(4):
        four = outliers.shift(four, "rotated", (3, 3))
    assert torch.equal(four, square)
    with pytest.raises(DataError, match="square images only"):
        outliers.shift(x, "rotated", (3, 4))


def test_the_scores_table_holds_both_sets_in_bits_and_the_corrected_score():
    log_px = (np.array([-10.0, -20.0]), np.array([-30.0]))
    scores = outliers.outlier_scores(*log_px, torch.zeros(2, 4), torch.ones(1, 4), (2, 2))
    table = scores.table()
    assert table["scored"].tolist() == [0, 0, 1]
    assert np.allclose(table["bits_per_dim"], [10 / math.log(2) / 4, 20 / math.log(2) / 4,
                                               30 / math.log(2) / 4])
    assert np.allclose(table["corrected"], -np.r_[log_px] / math.log(2) - table["complexity_bits"])
    metrics = scores.to_metrics()
    assert metrics["auroc"] == 1.0 and metrics["n_in"] == 2 and metrics["n_scored"] == 1


@pytest.mark.parametrize("text, expected", [("0-4", (0, 1, 2, 3, 4)), ("1,3,7", (1, 3, 7)),
                                            ("0-2, 5", (0, 1, 2, 5)), ("3", (3,)), (None, None)])
def test_classes_are_read_as_ranges_and_lists(text, expected):
    assert parse_classes(text) == expected


@pytest.mark.parametrize("text", ["a-b", "", "-1", "4-2"])
def test_bad_classes_are_one_config_error(text):
    with pytest.raises(ConfigError, match="classes must list labels like 0-4"):
        parse_classes(text)


def test_classes_keep_those_digits_of_mnist_only(mnist_dir):
    data = load_dataset("mnist", mnist_dir, classes="0-4")
    assert data.test_y.unique().tolist() == [0, 1, 2, 3, 4]
    assert len(data.test_y) == 980 + 1135 + 1032 + 1010 + 982
    first = load_dataset("mnist", mnist_dir, test_subset=10, classes="5-9")
    assert first.test_y.min() >= 5 and len(first.test_x) == 10


def test_dsprites_is_the_published_grid_split_into_a_seeded_tenth():
    train, train_y, test, test_y, shape = dsprites.read_dsprites()
    assert shape == (64, 64) and len(train) + len(test) == 737280 == dsprites.NUM_IMAGES
    assert len(test) == 73728
    assert set(train.index[:1000]).isdisjoint(test.index)
    assert [int(train_y[:, k].max()) + 1 for k in range(5)] == [3, 6, 40, 32, 32]
    assert np.allclose(dsprites.VALUES[1], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert dsprites.classes_of(np.array([1, 32, 1024, 40960])).tolist() == [
        [0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]


def test_dsprites_moves_one_pixel_per_position_step_and_scales_the_area():
    grid = np.array([[s, 5, 0, x, y] for s in range(3) for x, y in ((0, 0), (1, 0), (31, 31))]
                    + [[0, 0, 0, 0, 0]])
    images = dsprites.render(grid).astype(float)
    assert set(np.unique(images)) == {0.0, 1.0}
    rows, cols = np.arange(64)[:, None], np.arange(64)[None, :]
    centre = [((img * cols).sum() / img.sum(), (img * rows).sum() / img.sum()) for img in images]
    for s in range(3):
        (x0, y0), (x1, y1), (x31, y31) = centre[3 * s:3 * s + 3]
        assert (x1 - x0, y1 - y0) == pytest.approx((1.0, 0.0)) and x31 - x0 == pytest.approx(31)
        assert y31 - y0 == pytest.approx(31)
    assert images[0].sum() == 19 * 19 and images[-1].sum() == 9 * 9  # the square, scales 1, ½
    assert images[0].sum() > images[6].sum() > 0  # the heart is smaller than its box


def test_the_whole_dsprites_grid_renders_in_well_under_a_minute_of_one_cpu():
    dsprites.sprites.cache_clear()
    start, total = time.process_time(), 0
    table = dsprites.sprites()
    for first in range(0, dsprites.NUM_IMAGES, 65536):
        rows = np.arange(first, min(first + 65536, dsprites.NUM_IMAGES))
        total += int(dsprites.render(dsprites.classes_of(rows), table).sum(dtype=np.int64))
    assert time.process_time() - start < 60
    assert total > dsprites.NUM_IMAGES * 50
    assert dsprites.sprites() is table and not table.flags.writeable  # drawn once per process


def test_dsprites_too_large_for_memory_is_one_error_naming_the_fix(monkeypatch):
    monkeypatch.setattr(dsprites, "_free_bytes", lambda: 2.0**30)
    with pytest.raises(DataError, match="more than the 1.0 GiB free; take fewer with "
                                        "--train-subset"):
        dsprites.read_dsprites()[0].tensor()
    small = load_dataset("dsprites", train_subset=20, test_subset=5, classes="2")
    assert small.train_x.shape == (20, 4096) and small.train_y[:, 0].eq(2).all()


def test_kl_per_coordinate_and_active_units_match_the_closed_form():
    torch.manual_seed(0)
    vae = build_vae(hidden_dims=(16,), z_dim=4, x_dim=12)
    x = torch.bernoulli(torch.rand(300, 12))
    report = latent_report(vae, x)
    loc, scale = vae.q.encode(x)
    exact = (0.5 * (loc ** 2 + scale ** 2 - 1) - scale.log()).mean(0)
    assert torch.allclose(report.kl, exact.detach(), atol=1e-5)
    q = torch.distributions.Normal(loc, scale)
    total = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1).detach()
    assert float(report.kl.sum()) == pytest.approx(float(total.mean()), abs=1e-4)
    assert report.active_units == int((loc.var(0) > ACTIVE_THRESHOLD).sum())
    assert torch.allclose(report.scale, torch.ones(4), atol=0.05)


def test_kl_to_a_mixture_of_identical_standard_normals_is_the_standard_kl_within_mc_error():
    torch.manual_seed(0)
    vae = build_vae(prior="mog", hidden_dims=(16,), z_dim=3, x_dim=10, num_components=4)
    with torch.no_grad():
        vae.prior.locs.zero_()
        vae.prior.raw_scales.fill_(math.log(math.e - 1))  # softplus = 1
    x = torch.bernoulli(torch.rand(400, 10))
    report = latent_report(vae, x)
    loc, scale = vae.q.encode(x)
    exact = (0.5 * (loc ** 2 + scale ** 2 - 1) - scale.log()).mean(0).detach()
    assert torch.allclose(report.kl, exact, atol=0.02)


def test_traversals_sweep_one_coordinate_per_row_from_the_posterior_mean():
    torch.manual_seed(0)
    vae = build_vae(hidden_dims=(16,), z_dim=3, x_dim=16)
    x = torch.bernoulli(torch.rand(50, 16))
    report = latent_report(vae, x)
    images, coords = traversals(vae, x, report, steps=5)
    assert images.shape == (15, 16) and sorted(coords.tolist()) == [0, 1, 2]
    assert coords.tolist() == torch.argsort(report.kl, descending=True).tolist()
    mean = vae.q.encode(x[:1])[0]
    middle = vae.likelihood.mean(mean).detach()
    for row in range(3):
        assert torch.allclose(images[row * 5 + 2], middle[0], atol=1e-6)
        assert not torch.allclose(images[row * 5], images[row * 5 + 4])


def test_mig_is_near_one_for_codes_that_copy_the_factors_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    factors = rng.integers(0, 10, size=(5000, 2))
    copies = np.c_[factors[:, 0], factors[:, 1] * 0.1, rng.normal(size=5000)]
    score, mi = dis.mig(copies, factors)
    assert score > 0.97 and mi[0, 0] == pytest.approx(1.0) and mi[1, 1] == pytest.approx(1.0)
    assert dis.mutual_information(factors[:, 0], factors[:, 0]) == pytest.approx(math.log(10),
                                                                              abs=0.01)
    noise_score, _ = dis.mig(rng.normal(size=(5000, 3)), factors)
    assert noise_score < 0.03


class CopyFactors(torch.nn.Module):
    """A stand-in VAE whose posterior mean is the factor indices read off a 2-pixel image."""

    def __init__(self, mix: float = 0.0):
        super().__init__()
        self.mix, self.dummy = mix, torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return torch.device("cpu")

    def encode(self, x):
        a, b = x[:, 0] * 4, x[:, 1] * 5
        loc = torch.stack([a + self.mix * b, b + self.mix * a, torch.zeros_like(a)], 1)
        return loc, torch.ones_like(loc), []


TINY_GRID = types.SimpleNamespace(
    FACTORS=("a", "b"), SIZES=(4, 5),
    render=lambda c: np.c_[c[:, 0] / 4.0, c[:, 1] / 5.0].astype(np.float32))


def test_factorvae_metric_is_one_for_codes_that_copy_the_factors_and_drops_when_they_mix():
    exact = dis.factor_scores(CopyFactors(), TINY_GRID, num_codes=2000, votes=(100, 100),
                                batch=32)
    assert exact.factorvae_score == 1.0 and exact.mig > 0.95
    assert exact.active.tolist() == [True, True, False]  # the constant coordinate is pruned
    mixed = dis.factor_scores(CopyFactors(mix=1.0), TINY_GRID, num_codes=2000,
                                votes=(100, 100), batch=32)
    assert mixed.mig < exact.mig - 0.3
    assert dis.majority_accuracy(np.array([[0, 1], [0, 1], [1, 0]]),
                                 np.array([[0, 1], [1, 1], [2, 0]]), 3, 2) == pytest.approx(2 / 3)


def pvae(*args):
    return subprocess.run([sys.executable, "-m", "pvae", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


SMALL = ["--epochs", 1, "--hidden-dims", 32, "--z-dim", 4, "--device", "cpu", "--no-progress",
         "--eval-samples", 20]


@pytest.mark.slow
def test_score_separates_inverted_mnist_and_runs_on_other_classes(mnist_dir, tmp_path):
    run = tmp_path / "digits04"
    done = pvae("train", "--classes", "0-4", "--train-subset", 600, "--test-subset", 100,
                "--data-dir", mnist_dir, "--out", run, *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["classes"] == "0-4" and len(metrics["kl_per_dim"]) == 4
    assert 0 <= metrics["active_units"] <= 4 and metrics["latent_n_test"] == 100
    for name in ("traversals", "kl_per_dim"):
        assert (run / f"{name}.png").stat().st_size > 5000, name
    ckpt = run / "checkpoint.pt"
    for extra, out in ((["--shift", "inverted"], "inv"), (["--classes", "5-9"], "other")):
        done = pvae("score", "--checkpoint", ckpt, "--data-dir", mnist_dir, "--out",
                    tmp_path / out, "--test-subset", 100, "--num-samples", 20, *extra)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "AUROC: raw / corrected" in done.stdout
    inverted = json.loads((tmp_path / "inv" / "metrics_score.json").read_text())
    assert inverted["auroc"] > 0.99 and inverted["scored"] == "mnist (classes 0-4), inverted"
    assert {"auprc", "fpr_at_95_tpr", "auroc_corrected", "auprc_corrected",
            "fpr_at_95_tpr_corrected"} <= set(inverted)
    other = json.loads((tmp_path / "other" / "metrics_score.json").read_text())
    assert other["scored"] == "mnist (classes 5-9)" and other["n_in"] == other["n_scored"] == 100
    table = np.load(tmp_path / "other" / "scores.npy")
    assert table.shape == (200,) and table["scored"].sum() == 100
    assert np.mean(table["log_px"][table["scored"] == 1]) == pytest.approx(other["log_px_scored"])
    assert (tmp_path / "other" / "scores.png").stat().st_size > 5000


@pytest.mark.slow
def test_disentangle_scores_a_dsprites_model(tmp_path):
    run = tmp_path / "sprites"
    done = pvae("train", "--dataset", "dsprites", "--train-subset", 300, "--test-subset", 50,
                "--out", run, "--beta", 4, *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    done = pvae("disentangle", "--checkpoint", run / "checkpoint.pt", "--out", tmp_path / "d",
                "--test-subset", 40, "--num-codes", 400, "--votes", 30, 30, "--vote-batch", 16)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "d" / "metrics_disentangle.json").read_text())
    assert 0 <= metrics["mig"] <= 1 and metrics["beta"] == 4.0 and metrics["n_test"] == 40
    assert metrics["factorvae_score"] is None or 0 <= metrics["factorvae_score"] <= 1
    assert metrics["factors"] == list(dsprites.FACTORS)
    assert np.array(metrics["mi_normalised"]).shape == (4, 5)
    assert -4096 * math.log(2) < metrics["reconstruction"] < 0 and metrics["kl"] >= 0
    assert (tmp_path / "d" / "disentangle.png").stat().st_size > 5000
