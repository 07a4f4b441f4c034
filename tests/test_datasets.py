"""Datasets by name and the user's own files: small synthetic files written by each test."""
import json
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from pvae import build_vae, fit
from pvae.data import load_dataset
from pvae.data.own import HOLDOUT_SEED, as_images
from pvae.errors import DataError


def test_an_npz_with_train_and_test_keeps_both_and_takes_the_image_size_from_the_data(tmp_path):
    g = np.random.default_rng(0)
    train, test = g.integers(0, 256, (30, 12, 20), dtype=np.uint8), g.integers(0, 256, (7, 12, 20))
    np.savez(tmp_path / "d.npz", train=train, test=test)
    d = load_dataset(str(tmp_path / "d.npz"), binarize=False)
    assert d.image_shape == (12, 20) and d.train_x.shape == (30, 240) and d.test_x.shape == (7, 240)
    np.testing.assert_allclose(d.train_x.numpy(), train.reshape(30, -1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(d.test_x.numpy(), test.reshape(7, -1) / 255.0, rtol=1e-6)
    small = load_dataset(str(tmp_path / "d.npz"), binarize=True, train_subset=5, test_subset=3)
    assert small.train_x.shape == (5, 240) and set(small.test_x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(small.train_x, d.train_x[:5])


def test_one_array_holds_out_a_seeded_tenth(tmp_path):
    x = np.random.default_rng(1).random((50, 36)).astype(np.float32)  # in [0, 1), D = 6·6
    np.save(tmp_path / "x.npy", x)
    d = load_dataset(str(tmp_path / "x.npy"), binarize=False)
    assert d.image_shape == (6, 6) and d.train_x.shape == (45, 36) and d.test_x.shape == (5, 36)
    held = torch.randperm(50, generator=torch.Generator().manual_seed(HOLDOUT_SEED))[:5].sort()
    np.testing.assert_array_equal(d.test_x.numpy(), x[held.values.numpy()])
    rows = {tuple(r) for r in np.concatenate([d.train_x.numpy(), d.test_x.numpy()])}
    assert rows == {tuple(r) for r in x}  # a split: every row once
    again = load_dataset(str(tmp_path / "x.npy"), binarize=False)
    assert torch.equal(again.test_x, d.test_x)
    np.savez(tmp_path / "flat.npz", x=(x[:, :10] > 0.5))  # booleans, D = 10: not square
    flat = load_dataset(str(tmp_path / "flat.npz"), binarize=True)
    assert flat.image_shape == (10,) and flat.train_x.shape == (45, 10)


def test_an_image_folder_is_read_as_grayscale_with_its_classes_as_labels(tmp_path):
    from PIL import Image

    g = np.random.default_rng(2)
    pixels = {}
    for label, cls in enumerate(["cats", "dogs"]):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            rgb = g.integers(0, 256, (10, 14, 3), dtype=np.uint8)
            path = tmp_path / "imgs" / cls / f"{i}.png"
            Image.fromarray(rgb).save(path)
            pixels[path] = (np.asarray(Image.fromarray(rgb).convert("L")), label)
    d = load_dataset(str(tmp_path / "imgs"), binarize=False)
    assert d.image_shape == (10, 14) and d.train_x.shape == (18, 140) and d.test_x.shape == (2, 140)
    expected = {tuple((p.reshape(-1) / 255.0).astype(np.float32)): y for p, y in pixels.values()}
    for x, y in zip(torch.cat([d.train_x, d.test_x]), torch.cat([d.train_y, d.test_y])):
        assert expected[tuple(x.numpy())] == int(y)


def write_idx(path, array):
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + dims + array.tobytes())


def test_fashion_mnist_goes_through_torchvision_from_its_raw_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    g = np.random.default_rng(3)
    images = {"train": g.integers(0, 256, (12, 28, 28), dtype=np.uint8),
              "t10k": g.integers(0, 256, (4, 28, 28), dtype=np.uint8)}
    for split, x in images.items():
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(len(x), dtype=np.uint8) % 10)
    d = load_dataset("fashion-mnist", tmp_path, binarize=False)
    assert d.image_shape == (28, 28) and d.train_y.tolist() == list(range(10)) + [0, 1]
    np.testing.assert_allclose(d.test_x.numpy(), images["t10k"].reshape(4, -1) / 255.0, rtol=1e-6)


def test_a_missing_named_dataset_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PVAE_NETWORK_TIMEOUT", "3")
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets.KMNIST, "download", offline)
    with pytest.raises(DataError, match=r"could not get kmnist with torchvision.*KMNIST/raw"):
        load_dataset("kmnist", tmp_path)


BAD = [
    ("four-dims", lambda: np.zeros((4, 5, 5, 3)), r"has shape \(4, 5, 5, 3\); expected images"),
    ("nan", lambda: np.where(np.eye(6)[None] > 0, np.nan, 0.5).repeat(3, 0), "18 NaN/Inf"),
    ("above-255", lambda: np.full((3, 4, 4), 300), r"values in \[300, 300\]"),
    ("negative", lambda: -np.ones((3, 16)), r"values in \[-1, -1\]"),
    ("fractions-above-1", lambda: np.full((3, 16), 1.5), r"values in \[1.5, 1.5\]"),
    ("empty", lambda: np.zeros((0, 4, 4)), "is empty"),
    ("strings", lambda: np.array([["a", "b"]]), "images must be numbers"),
    ("one-image", lambda: np.zeros((1, 4, 4)), "too few to hold a test set out"),
]


@pytest.mark.parametrize("case, make, message", BAD, ids=[c[0] for c in BAD])
def test_bad_arrays_are_refused_naming_the_file_and_the_problem(tmp_path, case, make, message):
    path = tmp_path / f"{case}.npy"
    np.save(path, make())
    with pytest.raises(DataError, match=message) as info:
        load_dataset(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file or folder"),
    (lambda p: p.with_suffix(".csv").write_text("1,2"), "unknown data file type '.csv'"),
    (lambda p: p.with_suffix(".npz").write_bytes(b"not a zip"), "is not an .npz archive"),
    (lambda p: p.with_suffix(".npz").write_bytes(b"PK\x03\x04 not a zip"), "cannot be read as .npz"),
    (lambda p: np.savez(p.with_suffix(".npz"), images=np.zeros((3, 4))),
     r"holds the arrays \['images'\]; it needs 'train' and 'test' \(labels: 'train_y', "
     r"'test_y'\), or one array 'x' \(labels: 'y'\)"),
    (lambda p: np.savez(p.with_suffix(".npz"), train=np.zeros((3, 4, 4)),
                        test=np.zeros((3, 5, 5))), r"'train' images have shape \(4, 4\)"),
    (lambda p: p.mkdir(), "not an image folder"),
])
def test_bad_files_are_refused_before_any_training(tmp_path, make, message):
    base = tmp_path / "data"
    make(base)
    made = [p for p in tmp_path.iterdir()]
    with pytest.raises(DataError, match=message):
        load_dataset(str(made[0] if made else base))


def test_images_of_different_sizes_in_a_folder_name_the_odd_one(tmp_path):
    from PIL import Image

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "a" / "0.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "imgs" / "a" / "1.png")
    with pytest.raises(DataError, match=r"1.png is 8x9 pixels but .*0.png is 8x8"):
        load_dataset(str(tmp_path / "imgs"))


def test_whole_numbers_scale_by_255_and_probabilities_stay():
    x, shape = as_images(np.array([[0, 51, 255, 102]]), "t")
    torch.testing.assert_close(x, torch.tensor([[0.0, 0.2, 1.0, 0.4]]))
    assert shape == (2, 2)
    x, _ = as_images(np.array([[0.0, 0.25, 1.0]]), "t")
    assert x.tolist() == [[0.0, 0.25, 1.0]]


@pytest.mark.parametrize("hw", [(12, 20), (7, 9)])
def test_the_conv_guide_and_decoder_fit_images_that_are_not_28_by_28(hw):
    torch.manual_seed(0)
    d = hw[0] * hw[1]
    vae = build_vae(guide="conv", decoder="conv", conv_channels=2, z_dim=2, hidden_dims=(8,),
                    x_dim=d, image_shape=hw)
    assert vae.q.net.body.hw == hw and vae.likelihood.decoder.hw == hw
    x = torch.bernoulli(torch.full((40, d), 0.3), generator=torch.Generator().manual_seed(0))
    state = fit(vae, x, epochs=1, batch_size=20, device="cpu", progress=False, seed=0)
    assert np.isfinite(state.history[-1].train_elbo)
    assert vae.reconstruct(x[:3]).shape == (3, d) and vae.sample(2).shape == (2, d)
    x2 = x[:2].clone()
    x2[1, -1] = 1 - x2[1, -1]  # the last pixel (bottom right) reaches the encoder
    loc, _ = vae.q.encode(x[:2])
    loc2, _ = vae.q.encode(x2)
    assert torch.equal(loc[0], loc2[0]) and not torch.equal(loc[1], loc2[1])


def test_train_on_an_npz_then_evaluate_reloads_the_same_data_from_the_checkpoint(tmp_path):
    g = np.random.default_rng(4)
    np.savez(tmp_path / "d.npz", x=(g.random((120, 10, 6)) < 0.3))
    common = ["--device", "cpu", "--no-progress"]
    train = [sys.executable, "-m", "pvae", "train", "--dataset", str(tmp_path / "d.npz"),
             "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "20", "--z-dim",
             "2", "--hidden-dims", "8", "--guide", "conv", "--decoder", "conv",
             "--conv-channels", "2", "--eval-samples", "10", *common]
    done = subprocess.run(train, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_train"] == 108 and metrics["n_test"] == 12 and metrics["world_size"] == 1
    assert metrics["config"]["image_shape"] == [10, 6] and metrics["config"]["x_dim"] == 60
    evaluate = [sys.executable, "-m", "pvae", "evaluate", "--checkpoint",
                str(tmp_path / "run" / "checkpoint.pt"), "--num-samples", "10",
                "--out", str(tmp_path / "eval"), *common]
    done = subprocess.run(evaluate, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = json.loads((tmp_path / "eval" / "metrics_is.json").read_text())
    assert scored["n_test"] == 12 and scored["config"]["dataset"] == str(tmp_path / "d.npz")
    assert re.search(r"test images\s+12", done.stdout)


def test_a_run_resumes_on_its_own_data_and_is_refused_on_other_data(tmp_path):
    from pvae.errors import CheckpointError

    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((40, 16), 0.3), generator=g)

    def run(data, epochs, resume):
        torch.manual_seed(0)
        vae = build_vae(z_dim=2, hidden_dims=(8,), x_dim=16, image_shape=(4, 4))
        return fit(vae, data, epochs=epochs, batch_size=20, out_dir=tmp_path, resume=resume,
                   device="cpu", progress=False, seed=0)

    run(x, 1, False)
    assert run(x.double(), 2, True).epoch == 2  # the same images in another dtype
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"40 examples of shape \[16\], these are 30"):
        run(x[:30], 3, True)
    changed = x.clone()
    changed[0, 0] = 1 - changed[0, 0]
    with pytest.raises(CheckpointError, match="same shape but other values"):
        run(changed, 3, True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
