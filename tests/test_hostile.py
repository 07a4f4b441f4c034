"""Hostile input and faults: every case is one clear error line, and nothing is lost.

Each command-line case runs pvae in a subprocess on tiny data and asserts the exit status
2, a stderr of exactly one line ``error: ...`` that names the problem (no traceback, no
usage line), and that every file of the finished run next to it is byte-for-byte intact.
The Python cases assert the same through the API's exceptions.
"""
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from pvae import build_vae, fit
from pvae.errors import ConfigError, DataError, StorageError

TINY = ["--epochs", 1, "--train-subset", 200, "--test-subset", 50, "--eval-samples", 30,
        "--hidden-dims", 16, "--z-dim", 4, "--device", "cpu", "--no-progress"]


def pvae(*args, script=None):
    cmd = [sys.executable, str(REPO / "examples" / script)] if script else \
        [sys.executable, "-m", "pvae"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def snapshot(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".pvae.lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist_dir):
    """A finished one-epoch run: its folder (checkpoint, metrics, figures) and MNIST's."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    done = pvae("--data-dir", mnist_dir, "--out", out, *TINY, script="mnist_svi.py")
    assert done.returncode == 0, done.stderr[-2000:]
    return out, mnist_dir


def flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]


def old_format_file(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "pvae-checkpoint-1", "code": Evil()}, path)


def garbage_mnist(root: Path, mnist_dir: Path) -> Path:
    raw = root / "MNIST" / "raw"
    shutil.copytree(Path(mnist_dir) / "MNIST" / "raw", raw)
    images = raw / "train-images-idx3-ubyte"
    data = bytearray(images.read_bytes())
    for i in range(16, len(data), 997):
        data[i] ^= 0x5A
    images.write_bytes(bytes(data))
    return root


# (case id, how to build the arguments from (run folder, MNIST folder, scratch folder), the
# message the error line must match)
CLI_CASES = [
    ("rerun-finished-out", lambda r, m, t: ["train", "--data-dir", m, "--out", r, *TINY],
     "already holds a run.*--overwrite"),
    ("empty-out", lambda r, m, t: ["train", "--data-dir", m, "--out", "", *TINY], "--out is empty"),
    ("out-is-a-file", lambda r, m, t: ["train", "--data-dir", m, "--out", r / "metrics.json",
                                       *TINY], "cannot write to"),
    ("seed-negative", lambda r, m, t: ["train", "--seed", -1], "--seed must be in"),
    ("seed-too-large", lambda r, m, t: ["train", "--seed", 2**32], "--seed must be in"),
    ("warmup-1e308", lambda r, m, t: ["train", "--data-dir", m, "--out", t / "o", *TINY,
                                      "--beta-warmup-epochs", "1e308"],
     "--beta-warmup-epochs must be between 0 and --epochs"),
    ("lr-nan", lambda r, m, t: ["train", "--lr", "nan"], "--lr: must be a finite number"),
    ("unknown-option", lambda r, m, t: ["train", "--data-dir", m, "--out", t / "o", *TINY,
                                        "--num-components", 5], "unknown option 'num_components'"),
    ("resume-with-new-lr", lambda r, m, t: ["train", "--data-dir", m, "--out", r, *TINY,
                                            "--resume", "--lr", 0.5],
     "cannot resume.*lr 0.5 \\(the checkpoint has 0.001\\)"),
    ("resume-and-overwrite", lambda r, m, t: ["train", "--data-dir", m, "--out", r, *TINY,
                                              "--resume", "--overwrite"], "exclude each other"),
    ("test-subset-too-large", lambda r, m, t: ["train", "--data-dir", m, "--out", t / "o",
                                               "--test-subset", 20000, "--epochs", 1],
     "--test-subset 20000 is larger"),
    ("garbage-pixels", lambda r, m, t: ["train", "--data-dir", garbage_mnist(t / "d", m), "--out",
                                        t / "o", *TINY], "does not match MNIST.*delete"),
    ("compare-bad-value", lambda r, m, t: ["compare", "--configs", "prior=mog,num_components=abc",
                                           "--out", t / "c", *TINY],
     "num_components must be a whole number"),
    ("compare-misspelled-key", lambda r, m, t: ["compare", "--configs", "prior=standard",
                                                "priro=mog", "--out", t / "c", *TINY],
     "did you mean 'prior'"),
    ("compare-unknown-prior", lambda r, m, t: ["compare", "--priors", "standard", "gauss",
                                               "--out", t / "c", *TINY], "unknown prior 'gauss'"),
    ("evaluate-missing", lambda r, m, t: ["evaluate", "--checkpoint", t / "none.pt"], "no checkpoint"),
    ("evaluate-random-bytes", lambda r, m, t: ["evaluate", "--checkpoint",
                                               _write(t / "r.pt", os.urandom(5000))],
     "not a pvae checkpoint"),
    ("evaluate-truncated", lambda r, m, t: ["evaluate", "--checkpoint", _write(
        t / "t.pt", (r / "checkpoint.pt").read_bytes()[:4000])], "truncated"),
    ("evaluate-bit-flipped", lambda r, m, t: ["evaluate", "--checkpoint", _write(
        t / "f.pt", flip((r / "checkpoint.pt").read_bytes(), 5000))], "damaged"),
    ("evaluate-old-pickle-runs-no-code", lambda r, m, t: ["evaluate", "--checkpoint",
                                                          _old(t)], "pvae 0.1.*can run code"),
    ("gap-test-subset-too-large", lambda r, m, t: ["gap", "--checkpoint", r / "checkpoint.pt",
                                                   "--data-dir", m, "--out", t / "g",
                                                   "--test-subset", 20000],
     "--test-subset 20000 is larger"),
    ("evaluate-refined-ais", lambda r, m, t: ["evaluate", "--checkpoint", r / "checkpoint.pt",
                                              "--data-dir", m, "--method", "ais", "--proposal",
                                              "refined"], "--proposal applies to --method is"),
    ("evaluate-ais-zero-steps", lambda r, m, t: ["evaluate", "--checkpoint", r / "checkpoint.pt",
                                                 "--method", "ais", "--ais-steps", 0],
     "--ais-steps must be at least 1"),
    ("evaluate-unknown-method", lambda r, m, t: ["evaluate", "--checkpoint", r / "checkpoint.pt",
                                                 "--method", "hmc"], "--method: invalid choice"),
    ("plot-bad-device", lambda r, m, t: ["plot", "--checkpoint", r / "checkpoint.pt",
                                         "--device", "tpu"], "--device: invalid choice"),
    ("dataset-wrong-shape", lambda r, m, t: _own(t, np.zeros((20, 4, 4, 3))),
     r"x.npy has shape \(20, 4, 4, 3\); expected images"),
    ("dataset-nan", lambda r, m, t: _own(t, np.full((20, 16), np.nan)),
     "x.npy contains 320 NaN/Inf values"),
    ("dataset-out-of-range", lambda r, m, t: _own(t, np.full((20, 16), 256)),
     r"x.npy has values in \[256, 256\]; images must lie in \[0, 1\] or be whole numbers"),
    ("dataset-empty", lambda r, m, t: _own(t, np.zeros((0, 16))), "x.npy is empty"),
    ("dataset-missing", lambda r, m, t: ["train", "--dataset", t / "none.npz", "--out",
                                         t / "o", *TINY], "none.npz: no such file or folder"),
    ("classes-not-a-list", lambda r, m, t: ["train", "--classes", "a-b"],
     "--classes must list labels like 0-4"),
    ("classes-absent", lambda r, m, t: ["train", "--data-dir", m, "--out", t / "o", *TINY,
                                        "--classes", "12"],
     "--classes 12: the training set of mnist has no images of those classes"),
    ("score-names-nothing", lambda r, m, t: ["score", "--checkpoint", r / "checkpoint.pt",
                                             "--out", t / "s"], "name the images to score"),
    ("score-bdmc", lambda r, m, t: ["score", "--checkpoint", r / "checkpoint.pt", "--out",
                                    t / "s", "--shift", "noise", "--method", "bdmc"],
     "score estimates log p\\(x\\) with --method is or ais"),
    ("score-unknown-shift", lambda r, m, t: ["score", "--checkpoint", r / "checkpoint.pt",
                                             "--out", t / "s", "--shift", "blur"],
     "--shift: invalid choice"),
    ("score-wrong-size", lambda r, m, t: ["score", "--checkpoint", r / "checkpoint.pt",
                                          "--data-dir", m, "--out", t / "s", "--dataset",
                                          _saved(t, np.zeros((20, 10, 10)))],
     r"are 10x10 \(100 values\) but the model was trained on 28x28 \(784\); give images"),
    ("score-out-of-range", lambda r, m, t: ["score", "--checkpoint", r / "checkpoint.pt",
                                            "--data-dir", m, "--out", t / "s", "--dataset",
                                            _saved(t, np.full((20, 28, 28), 300))],
     r"x.npy has values in \[300, 300\]"),
    ("disentangle-no-factors", lambda r, m, t: ["disentangle", "--checkpoint",
                                                r / "checkpoint.pt", "--data-dir", m, "--out",
                                                t / "d"],
     "disentangle needs a dataset with known factors \\(dsprites\\); this model was trained "
     "on mnist"),
    ("disentangle-one-vote", lambda r, m, t: ["disentangle", "--checkpoint",
                                              r / "checkpoint.pt", "--out", t / "d", "--votes",
                                              1, 10], "--num-codes, --votes and --vote-batch"),
]


def _own(tmp: Path, array) -> list:
    """``pvae train`` on the user's own .npy file holding ``array``."""
    np.save(tmp / "x.npy", array)
    return ["train", "--dataset", tmp / "x.npy", "--out", tmp / "o", *TINY]


def _saved(tmp: Path, array) -> Path:
    np.save(tmp / "x.npy", array)
    return tmp / "x.npy"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _old(tmp: Path) -> Path:
    old_format_file(tmp / "old.pt", tmp / "ran")
    return tmp / "old.pt"


@pytest.mark.parametrize("case, build, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_with_one_clear_line_and_keeps_the_run(finished, tmp_path, case, build, message):
    run, mnist_dir = finished
    before = snapshot(run)
    done = pvae(*build(run, Path(mnist_dir), tmp_path))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, done.stderr[-2000:]  # usage errors too: no argparse usage line
    assert lines[0].startswith("error:") and re.search(message, lines[0]), done.stderr
    assert len(lines[0]) < 600
    assert snapshot(run) == before
    assert not (tmp_path / "ran").exists()
    assert not list(run.glob(".*.tmp"))


def test_a_second_run_on_a_busy_folder_is_refused(finished, tmp_path):
    run, mnist_dir = finished
    out = tmp_path / "busy"
    code = ("import sys, time\nfrom pvae.files import run_lock\n"
            f"with run_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = pvae("train", "--data-dir", mnist_dir, "--out", out, *TINY)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"another pvae run (pid {holder.pid})" in done.stderr.strip().splitlines()[-1]


def test_a_few_importance_samples_report_khat_as_unknown_not_zero(finished, tmp_path):
    run, mnist_dir = finished
    done = pvae("evaluate", "--checkpoint", run / "checkpoint.pt", "--data-dir", mnist_dir,
                "--num-samples", 20, "--test-subset", 10, "--out", tmp_path, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unknown" in done.stdout and "0.0% of images" not in done.stdout


def tiny_vae():
    torch.manual_seed(0)
    return build_vae(z_dim=3, hidden_dims=(16,))


X = torch.rand(64, 784)

API_CASES = [
    ("epochs-2.7", lambda: fit(tiny_vae(), X, epochs=2.7, device="cpu", progress=False),
     ConfigError, "epochs must be a whole number"),
    ("batch-size-2.5", lambda: fit(tiny_vae(), X, epochs=1, batch_size=2.5, device="cpu",
                                   progress=False), ConfigError, "batch_size must be a whole"),
    ("warmup-nan", lambda: fit(tiny_vae(), X, epochs=1, beta_warmup_epochs=math.nan,
                               device="cpu", progress=False), ConfigError,
     "beta_warmup_epochs must be a finite"),
    ("z-dim-2.5", lambda: build_vae(z_dim=2.5), ConfigError, "z_dim must be a whole number"),
    ("pixels-0-255", lambda: fit(tiny_vae(), (X * 255).to(torch.uint8), epochs=1, device="cpu",
                                 progress=False), DataError, r"\[0, 1\].*x / 255"),
    ("empty-train", lambda: fit(tiny_vae(), X[:0], epochs=1, device="cpu", progress=False),
     DataError, "training data is empty"),
    ("empty-test", lambda: fit(tiny_vae(), X, test_x=X[:0], epochs=1, device="cpu",
                               progress=False), DataError, "test data is empty"),
    ("nan-pixels", lambda: fit(tiny_vae(), X.masked_fill(X > 0.99, math.nan), epochs=1,
                               device="cpu", progress=False), DataError, "NaN"),
    ("numpy-array", lambda: fit(tiny_vae(), X.numpy(), epochs=1, device="cpu", progress=False),
     DataError, "torch.from_numpy"),
]


@pytest.mark.parametrize("case, call, error, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_with_one_clear_error(case, call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs, where mounting is allowed (root on Linux); skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr.strip()[:100]}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_says_so_and_keeps_the_last_checkpoint(small_disk):
    x = torch.bernoulli(torch.rand(128, 784, generator=torch.Generator().manual_seed(0)))
    out = small_disk / "run"
    fit(tiny_vae(), x, epochs=1, batch_size=64, out_dir=out, device="cpu", progress=False, seed=0)
    good = (out / "checkpoint.pt").read_bytes()
    with open(small_disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    with pytest.raises(StorageError, match="disk .* is full.*previous checkpoint.pt is intact"):
        fit(tiny_vae(), x, epochs=3, batch_size=64, out_dir=out, resume=True, device="cpu",
            progress=False, seed=0)
    assert (out / "checkpoint.pt").read_bytes() == good
    assert not list(out.glob(".*.tmp"))
