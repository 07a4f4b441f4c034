"""Hostile input and faults: every case is one clear error line, and nothing is lost.

Each command-line case runs pvae in a subprocess on tiny data and asserts the exit status
2, a stderr of exactly one line ``error: ...`` that names the problem (no traceback, no
usage line), and that every file of the finished runs next to it is byte-for-byte intact.
The Python cases assert the same through the API's exceptions. The cases an earlier sweep
found working wrongly (a figure, a resume, an image folder, AIS with one chain...) assert
what they do now; a rank lost under data parallelism and Ctrl-C assert their one line.
"""
import hashlib
import json
import logging
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO
from pvae import build_vae, fit, load
from pvae.errors import CheckpointError, ConfigError, DataError, PvaeError, StorageError
from pvae.evaluate import importance_sampling
from test_docs import small_mnist  # noqa: F401 (a fixture the quickstart case uses)

TINY = ["--epochs", 1, "--train-subset", 200, "--test-subset", 50, "--eval-samples", 30,
        "--hidden-dims", 16, "--z-dim", 4, "--device", "cpu", "--no-progress"]


OWN = ["--hidden-dims", 8, "--z-dim", 2, "--batch-size", 20, "--eval-samples", 10,
       "--device", "cpu", "--no-progress"]


def command(*args, script=None) -> list[str]:
    cmd = [sys.executable, str(REPO / "examples" / script)] if script else \
        [sys.executable, "-m", "pvae"]
    return [*cmd, *map(str, args)]


def environment(**changes) -> dict:
    """The environment of a pvae subprocess: this checkout's pvae from any folder."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **changes}


def pvae(*args, script=None, env=None, cwd=REPO):
    return subprocess.run(command(*args, script=script), capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=environment(**(env or {})))


def snapshot(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".pvae.lock"}


def own(run: Path) -> Path:
    """The folder beside the finished MNIST run holding ``x.npy`` (60 images of 8×8 pixels of
    one's own) and ``run/``, two epochs trained on it from that folder as ``--dataset x.npy``."""
    return run.parent / "own"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist_dir):
    """A finished one-epoch run: its folder (checkpoint, metrics, figures) and MNIST's; and the
    finished run on data of one's own (:func:`own`)."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    done = pvae("--data-dir", mnist_dir, "--out", out, *TINY, script="mnist_svi.py")
    assert done.returncode == 0, done.stderr[-2000:]
    own(out).mkdir()
    pixels = np.random.default_rng(0).random((60, 8, 8)) < 0.3
    np.save(own(out) / "x.npy", pixels.astype(np.uint8))
    done = pvae("train", "--dataset", "x.npy", "--out", "run", "--epochs", 2, *OWN,
                cwd=own(out))
    assert done.returncode == 0, done.stderr[-2000:]
    return out, mnist_dir


def kept_runs(run: Path, tmp: Path) -> list[Path]:
    """Every finished run a case must leave intact: the two of :func:`finished` and those
    the case made in its own folder ``tmp``."""
    return [run, own(run) / "run", *sorted({p.parent for p in tmp.rglob("metrics.json")})]


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
    # round 2: resume, own files, compare, environment variables, evaluation
    ("resume-other-train-subset", lambda r, m, t: ["train", "--data-dir", m, "--out", r, *TINY,
                                                   "--train-subset", 300, "--resume"],
     "cannot resume .* on other training data: the checkpoint trained on 200 examples .*"
     "these are 300"),
    ("resume-regenerated-file", lambda r, m, t: _regenerated(r, t),
     "on other training data: the images have the same shape but other values"),
    ("resume-fewer-epochs", lambda r, m, t: ["train", "--dataset", own(r) / "x.npy", "--out",
                                             own(r) / "run", "--resume", "--epochs", 1, *OWN],
     "to --epochs 1: it is trained to epoch 2 already; give --epochs 3 or more"),
    ("dataset-empty-name", lambda r, m, t: ["train", "--dataset", "", "--out", t / "o", *TINY],
     "--dataset is empty"),
    ("dataset-text-named-npz", lambda r, m, t: ["train", "--dataset", _write(
        t / "x.npz", b"hello\n"), "--out", t / "o", *TINY], "x.npz is not an .npz archive"),
    ("dataset-object-array", lambda r, m, t: _own(t, np.array([{}, {}], dtype=object)),
     "x.npy holds Python objects .* save the images as an array of numbers"),
    ("compare-out-is-a-file", lambda r, m, t: ["compare", "--configs", "prior=standard",
                                               "--out", r / "metrics.json", *TINY],
     "cannot write to .*metrics.json .*choose a writable folder as --out"),
    ("compare-out-read-only", lambda r, m, t: ["compare", "--configs", "prior=standard",
                                               "--out", _read_only(t) / "cmp", *TINY],
     r"cannot write to .*cmp \((Read-only file system|Permission denied)\)"),
    ("rank-not-a-number", lambda r, m, t: (["train", "--out", t / "o", *TINY], {"RANK": "abc"}),
     "RANK must be a whole number, got 'abc'"),
    ("progress-seconds-not-a-number", lambda r, m, t: (["train", "--out", t / "o", *TINY],
                                                       {"PVAE_PROGRESS_SECONDS": "soon"}),
     "PVAE_PROGRESS_SECONDS must be a positive number of seconds"),
    ("evaluate-refined-two-layers", lambda r, m, t: [
        "evaluate", "--checkpoint", _two_layers(t), "--data-dir", m, "--proposal", "refined",
        "--test-subset", 3, "--num-samples", 30, "--device", "cpu"],
     "the refined proposal, the amortization gap.* support models of one stochastic layer"),
    ("evaluate-other-image-size", lambda r, m, t: [
        "evaluate", "--checkpoint", r / "checkpoint.pt", "--out", t / "e", "--dataset",
        _npz(t, x=np.zeros((30, 20, 24), np.uint8))],
     "trained on 28×28 images and .*d.npz's are 20×24"),
    ("conv-channels-zero", lambda r, m, t: ["train", "--data-dir", m, "--out", t / "o", *TINY,
                                            "--guide", "conv", "--conv-channels", 0],
     "--conv-channels must be an integer >= 1, got 0"),
    ("device-cuda-without-gpu", lambda r, m, t: _without_gpu(
        ["evaluate", "--checkpoint", r / "checkpoint.pt", "--device", "cuda"]),
     "--device cuda was asked for but torch sees no GPU; use --device cpu or auto"),
    # labels
    ("semi-without-labels", lambda r, m, t: [*_own(t, np.zeros((600, 16))), "--supervision",
                                             "semi"], "supervision semi needs labels.*train_y"),
    ("labelled-without-semi", lambda r, m, t: ["train", "--labelled", 100],
     "--labelled applies to --supervision semi"),
    ("semi-with-iwae", lambda r, m, t: ["train", "--supervision", "semi", "--loss", "iwae"],
     "use --loss elbo"),
    ("conditional-conv-guide", lambda r, m, t: ["train", "--supervision", "conditional",
                                                "--guide", "conv"],
     "--guide 'conv' cannot be used with --supervision 'conditional'"),
    ("labelled-more-than-the-data", lambda r, m, t: ["train", "--data-dir", m, "--out", t / "o",
                                                     *TINY, "--supervision", "semi",
                                                     "--labelled", 300],
     "--labelled 300 asks for more labels than the 200"),
    ("labels-float", lambda r, m, t: _labelled(t, np.arange(20) / 2), "holds float64 values"),
    ("labels-nan", lambda r, m, t: _labelled(t, np.full(20, np.nan)), "20 NaN labels"),
    ("labels-negative", lambda r, m, t: _labelled(t, np.arange(20) - 3), "holds the label -3"),
    ("labels-wrong-length", lambda r, m, t: _labelled(t, np.arange(19)),
     r"has shape \(19,\); labels need one class per image, shape \(20,\)"),
    ("labels-for-one-split", lambda r, m, t: _own_npz(t, train=np.zeros((20, 16)),
                                                      test=np.zeros((5, 16)),
                                                      train_y=np.zeros(20, dtype=int)),
     "has train_y but not the other"),
    # uses of a trained VAE
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


def _labelled(tmp: Path, labels) -> list:
    """``pvae train --supervision semi`` on an .npz of 20 images ``x`` and the labels ``y``."""
    return [*_own_npz(tmp, x=np.zeros((20, 16)), y=labels), "--supervision", "semi"]


def _own_npz(tmp: Path, **arrays) -> list:
    """``pvae train`` on the user's own .npz file holding ``arrays``."""
    np.savez(tmp / "x.npz", **arrays)
    return ["train", "--dataset", tmp / "x.npz", "--out", tmp / "o", *TINY]


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


def _without_gpu(args: list) -> list:
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    return args


def _npz(tmp: Path, **arrays) -> Path:
    np.savez(tmp / "d.npz", **arrays)
    return tmp / "d.npz"


def _regenerated(run: Path, tmp: Path) -> list:
    """A copy of the run of one's own whose data file was written again: same shape, other
    images; resumed on it."""
    copy = tmp / "own"
    shutil.copytree(own(run), copy)
    np.save(copy / "x.npy", 1 - np.load(copy / "x.npy"))
    return ["train", "--dataset", copy / "x.npy", "--out", copy / "run", "--resume",
            "--epochs", 3, *OWN]


def _read_only(tmp: Path) -> Path:
    """A folder nothing can be written to: a read-only tmpfs (as root), else mode 0o555."""
    folder = tmp / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode != 0:
        folder.chmod(0o555)
    return folder


def _release(tmp: Path) -> None:
    folder = tmp / "ro"
    if folder.is_mount():
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    elif folder.exists():
        folder.chmod(0o755)


def _two_layers(tmp: Path) -> Path:
    """The checkpoint of a tiny two-layer VAE (``fit`` for one epoch on random pixels)."""
    torch.manual_seed(0)
    vae = build_vae(stochastic_layers=2, z_dim=3, hidden_dims=(16,), top_z_dim=2,
                    top_hidden_dims=(8,))
    fit(vae, X, epochs=1, out_dir=tmp / "two", device="cpu", progress=False, seed=0)
    return tmp / "two" / "checkpoint.pt"


@pytest.mark.parametrize("case, build, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_with_one_clear_line_and_keeps_the_run(finished, tmp_path, case, build, message):
    run, mnist_dir = finished
    built = build(run, Path(mnist_dir), tmp_path)
    args, env = built if isinstance(built, tuple) else (built, {})
    runs = kept_runs(run, tmp_path)
    before = [snapshot(r) for r in runs]
    try:
        done = pvae(*args, env=env)
    finally:
        _release(tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, done.stderr[-2000:]  # usage errors too: no argparse usage line
    assert lines[0].startswith("error:") and re.search(message, lines[0]), done.stderr
    assert len(lines[0]) < 600
    assert [snapshot(r) for r in runs] == before
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


def _checkpoint(tmp: Path, epochs: int = 1) -> Path:
    """The checkpoint of :func:`tiny_vae` trained by ``fit`` into ``tmp/c``."""
    fit(tiny_vae(), X, epochs=epochs, out_dir=tmp / "c", device="cpu", progress=False, seed=0)
    return tmp / "c" / "checkpoint.pt"


def _score(vae, x: torch.Tensor):
    """Importance sampling of ``x`` under ``vae``, which checks the data as ``host``."""
    return importance_sampling(vae.model, vae.guide, x, num_samples=5, host=vae, progress=False)

API_CASES = [
    ("epochs-2.7", lambda t: fit(tiny_vae(), X, epochs=2.7, device="cpu", progress=False),
     ConfigError, "epochs must be a whole number"),
    ("batch-size-2.5", lambda t: fit(tiny_vae(), X, epochs=1, batch_size=2.5, device="cpu",
                                   progress=False), ConfigError, "batch_size must be a whole"),
    ("warmup-nan", lambda t: fit(tiny_vae(), X, epochs=1, beta_warmup_epochs=math.nan,
                               device="cpu", progress=False), ConfigError,
     "beta_warmup_epochs must be a finite"),
    ("z-dim-2.5", lambda t: build_vae(z_dim=2.5), ConfigError, "z_dim must be a whole number"),
    ("pixels-0-255", lambda t: fit(tiny_vae(), (X * 255).to(torch.uint8), epochs=1, device="cpu",
                                 progress=False), DataError, r"\[0, 1\].*x / 255"),
    ("empty-train", lambda t: fit(tiny_vae(), X[:0], epochs=1, device="cpu", progress=False),
     DataError, "training data is empty"),
    ("empty-test", lambda t: fit(tiny_vae(), X, test_x=X[:0], epochs=1, device="cpu",
                               progress=False), DataError, "test data is empty"),
    ("nan-pixels", lambda t: fit(tiny_vae(), X.masked_fill(X > 0.99, math.nan), epochs=1,
                               device="cpu", progress=False), DataError, "NaN"),
    ("numpy-array", lambda t: fit(tiny_vae(), X.numpy(), epochs=1, device="cpu", progress=False),
     DataError, "torch.from_numpy"),
    # round 2
    ("load-device-missing", lambda t: load(_checkpoint(t), device="cuda:99"), ConfigError,
     "device cuda:99 was asked for but torch sees"),
    ("load-other-architecture", lambda t: load(_checkpoint(t), vae=build_vae(
        z_dim=2, hidden_dims=(16,))), CheckpointError,
     r"does not fit this model: its \S+ has shape \(\d+.*\) and this model's \(\d+"),
    ("fit-twice-names-python-arguments", lambda t: [_checkpoint(t) for _ in range(2)],
     ConfigError, r"continue it \(resume=True\), replace it \(overwrite=True\)"),
    ("resume-fewer-epochs", lambda t: fit(tiny_vae(), X, epochs=1, out_dir=_checkpoint(
        t, epochs=2).parent, resume=True, device="cpu", progress=False, seed=0), ConfigError,
     "it is trained to epoch 2 already; give epochs 3 or more"),
    ("other-image-size", lambda t: _score(build_vae(z_dim=2, hidden_dims=(8,),
                                                    image_shape=(28, 28)), torch.rand(5, 480)),
     DataError, r"built for 28×28 images \(784 values\) and these data have 480 values"),
    # labels
    ("labels-out-of-range", lambda t: fit(labelled_vae(), X, y=torch.arange(64) % 11, epochs=1,
                                        device="cpu", progress=False), DataError,
     "must lie in 0 … 9 or -1 \\(unlabelled\\).*from 0 to 10"),
    ("labels-float", lambda t: fit(labelled_vae(), X, y=torch.zeros(64), epochs=1, device="cpu",
                                 progress=False), DataError, "y.long\\(\\)"),
    ("labels-nan", lambda t: fit(labelled_vae(), X, y=torch.full((64,), math.nan), epochs=1,
                               device="cpu", progress=False), DataError, "contain NaN"),
    ("labels-wrong-length", lambda t: fit(labelled_vae(), X, y=torch.zeros(63, dtype=torch.long),
                                        epochs=1, device="cpu", progress=False), DataError,
     "shape \\(64,\\), got \\(63,\\)"),
    ("labels-for-an-unlabelled-vae", lambda t: fit(tiny_vae(), X, y=torch.zeros(64, dtype=int),
                                                 epochs=1, device="cpu", progress=False),
     ConfigError, "this VAE has none"),
    ("conditional-without-labels", lambda t: fit(labelled_vae("conditional"), X, epochs=1,
                                               device="cpu", progress=False), ConfigError,
     "fit\\(..., y=labels"),
    ("conditional-unlabelled-example", lambda t: fit(
        labelled_vae("conditional"), X, y=torch.arange(64) % 10 - 1, epochs=1, device="cpu",
        progress=False), DataError, "must lie in 0 … 9 for 10 classes"),
    ("semi-without-classes", lambda t: build_vae(supervision="semi"), ConfigError,
     "num_classes=K"),
]


def labelled_vae(supervision="semi"):
    torch.manual_seed(0)
    return build_vae(z_dim=3, hidden_dims=(16,), supervision=supervision, num_classes=10)


@pytest.mark.parametrize("case, call, error, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_with_one_clear_error(tmp_path, case, call, error, message):
    with pytest.raises(error, match=message) as info:
        call(tmp_path)
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


# What an earlier sweep found working wrongly, each case now asserting what it does (f: the
# finished runs, MNIST's folder, the case's own folder and pytest's request and fixtures).

def _one_test_image(f):
    """The latent figure of one test image (z_dim 4 > 2): drawn, the results written."""
    done = pvae("train", "--data-dir", f.mnist, "--out", f.tmp / "one", *TINY, "--test-subset", 1)
    assert done.returncode == 0 and "could not draw" not in done.stderr, done.stderr[-2000:]
    assert json.loads((f.tmp / "one" / "metrics.json").read_text())["n_test"] == 1
    assert (f.tmp / "one" / "latent.png").is_file()
    done = pvae("plot", "--checkpoint", f.run / "checkpoint.pt", "--data-dir", f.mnist,
                "--test-subset", 1, "--out", f.tmp / "plot", "--device", "cpu")
    assert done.returncode == 0 and "could not draw" not in done.stderr, done.stderr[-2000:]
    assert "latent.png" in done.stdout


def _five_images_of_ones_own(f):
    """A file of 5 images: 4 train, 1 held out, every figure drawn."""
    pixels = np.random.default_rng(1).random((5, 6, 6)) < 0.5
    np.save(f.tmp / "five.npy", pixels.astype(np.uint8))
    done = pvae("train", "--dataset", f.tmp / "five.npy", "--out", f.tmp / "five", "--epochs", 1,
                *OWN)
    assert done.returncode == 0 and "could not draw" not in done.stderr, done.stderr[-2000:]
    metrics = json.loads((f.tmp / "five" / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_test"]) == (4, 1)
    assert (f.tmp / "five" / "latent.png").is_file()


def _folder_with_a_link_loop(f):
    """``a/up -> ..``: each of the 10 images once, the loop skipped with a warning."""
    from PIL import Image

    from pvae import load_dataset

    folder = f.tmp / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((6, 6), 25 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "up").symlink_to("..")
    data = load_dataset(str(f.tmp / "imgs"), binarize=False)
    assert (data.train_x.shape[0], data.test_x.shape[0]) == (9, 1)
    pixels = torch.cat([data.train_x, data.test_x])[:, 0].mul(255).round()
    assert sorted(pixels.tolist()) == [25.0 * i for i in range(10)]
    assert "a folder already read" in f.caplog.text


def _png_of_16_bits(f):
    """16-bit PNGs scale by 65535 (not clipped to white), 8-bit ones by 255, in one folder."""
    from PIL import Image

    from pvae import load_dataset

    folder = f.tmp / "deep" / "a"
    folder.mkdir(parents=True)
    deep = np.array([[0, 257, 32768, 65535]] * 4, np.uint16)
    Image.fromarray(deep).save(folder / "0.png")
    Image.fromarray(np.array([[0, 1, 128, 255]] * 4, np.uint8)).save(folder / "1.png")
    data = load_dataset(str(f.tmp / "deep"), binarize=False)
    x = torch.cat([data.test_x, data.train_x]) if data.test_x[0, 2] < 0.5 else \
        torch.cat([data.train_x, data.test_x])
    assert x[0, :4].tolist() == pytest.approx([0, 1 / 255, 128 / 255, 1], abs=1e-7)
    assert x[1, :4].tolist() == pytest.approx([0, 257 / 65535, 32768 / 65535, 1], abs=1e-7)


def _ais_with_one_chain(f):
    """C = 1: the across-chain s.e. is unknown (None, n/a) and the figure says so."""
    done = pvae("evaluate", "--checkpoint", f.run / "checkpoint.pt", "--data-dir", f.mnist,
                "--method", "ais", "--ais-chains", 1, "--ais-steps", 3, "--test-subset", 3,
                "--out", f.tmp / "ais", "--device", "cpu", "--no-progress")
    assert done.returncode == 0 and "could not draw" not in done.stderr, done.stderr[-2000:]
    assert json.loads((f.tmp / "ais" / "metrics_ais.json").read_text())["ais_chain_stderr"] is None
    assert re.search(r"s\.e\. across chains \(mean\)\s+n/a", done.stdout)
    assert (f.tmp / "ais" / "ais.png").is_file()


def _ais_chunk_bounds_a_pass(f):
    """50 chains with chunk_size 8: no pass anneals more than 8 chains × examples, the result
    still exact (the exact posterior as guide), and the budget said up front."""
    import pvae.infer.annealing as annealing
    from linear_gaussian import exact_log_px, make_problem, make_vae, sample_data

    W, b, sigma = make_problem()
    x, vae, sizes = sample_data(W, b, sigma, 3), make_vae(W, b, sigma), []

    class Counted(annealing.Target):
        def __init__(self, model, guide, call, pdim, chains, *compiled):
            sizes.append(chains * call[0].shape[0])
            super().__init__(model, guide, call, pdim, chains, *compiled)

    f.monkeypatch.setattr(annealing, "Target", Counted)
    f.monkeypatch.setattr(annealing, "LARGE_BUDGET", 1)
    f.caplog.set_level(logging.INFO, logger="pvae.infer.annealing")
    result = annealing.ais(vae.model, vae.guide, x, num_steps=3, num_chains=50, num_leapfrog=2,
                           chunk_size=8)
    assert max(sizes) <= 8 and result.log_weights.shape == (3, 50)
    np.testing.assert_allclose(result.log_px.numpy(), exact_log_px(x, W, b, sigma).numpy(),
                               rtol=0, atol=1e-8)
    assert "50 chains x 2 HMC moves x 2 leapfrog steps" in f.caplog.text
    assert "in 21 pass(es) of at most 8 chains" in f.caplog.text


def _resume_by_an_absolute_path(f):
    """The file trained on as ``x.npy`` (relative), resumed by its absolute path."""
    copy = f.tmp / "own"
    shutil.copytree(own(f.run), copy)
    done = pvae("train", "--dataset", (copy / "x.npy").resolve(), "--out", copy / "run",
                "--resume", "--epochs", 3, *OWN)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((copy / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["config"]["dataset"] == str(copy / "x.npy")


def _evaluate_from_another_folder(f):
    """A run trained on ``--dataset x.npy`` stored its absolute path: evaluated from elsewhere."""
    done = pvae("evaluate", "--checkpoint", own(f.run) / "run" / "checkpoint.pt", "--out",
                f.tmp / "e", "--num-samples", 10, "--device", "cpu", "--no-progress", cwd=f.tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((f.tmp / "e" / "metrics_is.json").read_text())
    assert metrics["config"]["dataset"] == str(own(f.run) / "x.npy") and metrics["n_test"] == 6


def _help_shows_every_default(f):
    """Every flag of every command shows its default, or is required."""
    import argparse

    from pvae.runs.cli import COMMANDS
    from pvae.runs.flags import Parser

    for name, (add_arguments, _) in COMMANDS.items():
        parser = Parser(prog=name)
        add_arguments(parser)
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.required or "default" in action.help, (name, action.dest)
    done = pvae("train", "--help")
    for shown in ("--epochs EPOCHS", "(default: 40)", "(default: runs/mnist)", "(default: 0.001)",
                  "(default: [200, 200])", "(default: standard)", "(default: 1000)"):
        assert shown in done.stdout, shown


def _quickstart_twice(f):
    """The README's Python quickstart runs twice in one folder (it passes overwrite=True)."""
    from test_docs import python_blocks

    f.request.getfixturevalue("small_mnist")
    f.monkeypatch.chdir(f.tmp)
    block = compile(python_blocks(REPO / "README.md")[0], "README.md", "exec")
    for _ in range(2):
        exec(block, {})
    assert (f.tmp / "runs" / "quick" / "checkpoint.pt").is_file()


def _progress_off_a_terminal(f):
    """No terminal: progress is a log line at a steady interval, never a carriage return."""
    done = pvae("evaluate", "--checkpoint", f.run / "checkpoint.pt", "--data-dir", f.mnist,
                "--test-subset", 20, "--num-samples", 50, "--out", f.tmp / "e", "--device",
                "cpu", env={"PVAE_PROGRESS_SECONDS": "0.01"})
    assert done.returncode == 0 and "\r" not in done.stderr, done.stderr[-2000:]
    assert re.search(r"log p\(x\), K=50: 20/20 images \(100%\), \d+ s", done.stderr)
    code = ("import logging, torch\nlogging.basicConfig(level=logging.INFO)\n"
            "from pvae import build_vae, fit\n"
            "fit(build_vae(z_dim=2, hidden_dims=(8,)), torch.rand(300, 784), epochs=1, "
            "batch_size=10, device='cpu')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment(PVAE_PROGRESS_SECONDS="0.01"), timeout=300)
    assert done.returncode == 0 and "\r" not in done.stderr, done.stderr[-2000:]
    assert re.search(r"epoch 1/1: \d+/30 steps \(\d+%\)", done.stderr), done.stderr[-2000:]


def _latent_labels(f):
    """The latent figure's colour bar: MNIST's digits; none for data without labels."""
    import pvae.runs.plotting as plotting
    from pvae import RunConfig
    from pvae.runs.experiment import label_name

    figures = []
    f.monkeypatch.setattr(plotting, "_save", lambda fig, path, grid=None: figures.append(fig))
    z = torch.randn(30, 4)
    plotting.plot_latent(z, torch.arange(30) % 10, f.tmp / "a.png", "digit")
    plotting.plot_latent(z, torch.zeros(30, dtype=torch.int64), f.tmp / "b.png")
    assert [len(fig.axes) for fig in figures] == [2, 1]
    assert figures[0].axes[1].get_ylabel() == "digit"
    assert "one colour" in figures[1].axes[0].get_title()
    assert label_name(RunConfig()) == "digit"
    assert label_name(RunConfig.from_dict({"dataset": "x.npy"})) == "class"


WORKS = [
    ("latent-one-test-image", _one_test_image),
    ("own-data-of-five-images", _five_images_of_ones_own),
    ("image-folder-link-loop", _folder_with_a_link_loop),
    ("png-16-bit", _png_of_16_bits),
    ("ais-one-chain", _ais_with_one_chain),
    ("ais-chunk-size-bounds-memory", _ais_chunk_bounds_a_pass),
    ("resume-by-absolute-path", _resume_by_an_absolute_path),
    ("evaluate-from-another-folder", _evaluate_from_another_folder),
    ("help-shows-defaults", _help_shows_every_default),
    ("readme-quickstart-twice", _quickstart_twice),
    ("progress-off-a-terminal", _progress_off_a_terminal),
    ("latent-labels", _latent_labels),
]


@pytest.mark.parametrize("case, check", WORKS, ids=[c[0] for c in WORKS])
def test_what_an_earlier_sweep_found_wrong_now_works(finished, tmp_path, request, monkeypatch,
                                                     caplog, case, check):
    run, mnist_dir = finished
    runs = kept_runs(run, tmp_path)
    before = [snapshot(r) for r in runs]
    check(SimpleNamespace(run=run, mnist=Path(mnist_dir), tmp=tmp_path, request=request,
                          monkeypatch=monkeypatch, caplog=caplog))
    assert [snapshot(r) for r in runs] == before


INTERRUPTED = "no results were written and the checkpoint is unchanged; rerun the command"


def evaluate_is(run: Path, mnist_dir: Path, tmp: Path) -> list:
    return ["evaluate", "--checkpoint", run / "checkpoint.pt", "--data-dir", mnist_dir,
            "--out", tmp / "e", "--num-samples", 1000]


INTERRUPT_CASES = [
    ("evaluate-is", evaluate_is, signal.SIGINT, f"interrupted: {INTERRUPTED}", 130),
    ("evaluate-ais", lambda r, m, t: ["evaluate", "--checkpoint", r / "checkpoint.pt",
                                      "--data-dir", m, "--out", t / "e", "--method", "ais",
                                      "--ais-steps", 5000],
     signal.SIGINT, f"interrupted: {INTERRUPTED}", 130),
    ("gap", lambda r, m, t: ["gap", "--checkpoint", r / "checkpoint.pt", "--data-dir", m,
                             "--out", t / "e"], signal.SIGINT, f"interrupted: {INTERRUPTED}", 130),
    ("evaluate-sigterm", evaluate_is, signal.SIGTERM, f"terminated (SIGTERM): {INTERRUPTED}",
     143),
]


def heed_ctrl_c():
    """In the child: SIGINT as a terminal gives it (a suite run in the background, under nohup
    or CI, ignores it and would pass that on)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("case, build, how, message, status", INTERRUPT_CASES,
                         ids=[c[0] for c in INTERRUPT_CASES])
def test_ctrl_c_while_evaluating_says_what_is_kept(finished, tmp_path, case, build, how, message,
                                                   status):
    """SIGINT (Ctrl-C) or SIGTERM (kill, a scheduler) once the command logs its progress (so it
    is evaluating): one line that says what is kept, exit 130 or 143."""
    run, mnist_dir = finished
    runs = kept_runs(run, tmp_path)
    before = [snapshot(r) for r in runs]
    proc = subprocess.Popen(command(*build(run, Path(mnist_dir), tmp_path), "--device", "cpu"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=environment(PVAE_PROGRESS_SECONDS="0.2"),
                            preexec_fn=heed_ctrl_c)
    seen, deadline = "", time.monotonic() + 240
    try:
        while time.monotonic() < deadline and not re.search(r"\d+/\d+ \w+ \(\d+%\)", seen):
            if select.select([proc.stderr], [], [], 1)[0]:
                seen += proc.stderr.readline()
        proc.send_signal(how)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert re.search(r"\d+/\d+ \w+ \(\d+%\)", seen), seen[-2000:]
    lines = err.strip().splitlines()
    assert proc.returncode == status, (proc.returncode, err[-2000:])
    assert lines[-1] == message and "Traceback" not in seen + err, err[-2000:]
    assert not (tmp_path / "e").exists() or not list((tmp_path / "e").glob("*.json"))
    assert [snapshot(r) for r in runs] == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, fn, port, out, args):
    """One of two gloo ranks (collectives give up after 5 s): ``fn(rank, out, *args)`` in the
    process group; what it ended with, as the command line would print it, in out/rank{r}.txt."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PVAE_DIST_TIMEOUT="5",
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from pvae import distributed
    from pvae.runs.flags import as_flags

    if rank == 1 and getattr(fn, "rank_1_freezes_as_it_starts", False):
        os.kill(os.getpid(), signal.SIGSTOP)
    try:
        with distributed.process_group("cpu", out / "run" / "checkpoint.pt"):
            fn(rank, out, *args)
        outcome = "finished"
    except PvaeError as err:
        outcome = f"{type(err).__name__}: {as_flags(err)}"
    (out / f"rank{rank}.txt").write_text(outcome)


def two_ranks(fn, out: Path, *args, timeout: float = 120) -> list[str]:
    """Run :func:`_rank` on 2 processes until rank 0 ends; kill what is left; their outcomes."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_rank, args=(fn, free_port(), out, args), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while ctx.processes[0].is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in ctx.processes:
        if p.is_alive():
            p.kill()  # a stopped (frozen) rank too
        p.join()
    return [(out / f"rank{r}.txt").read_text() if (out / f"rank{r}.txt").exists() else ""
            for r in range(2)]


def _rank_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.bernoulli(torch.rand(64, 16, generator=g), generator=g)


def _train_and_lose_rank_1(rank, out, how):
    """Three epochs of 4 steps per rank; rank 1 is killed (or frozen) at its 6th step."""
    import pvae.training.loop as loop

    if rank == 1:
        real = loop.make_step

        def make_step(*a, **k):
            step, calls = real(*a, **k), [0]

            def lose(*args):
                calls[0] += 1
                if calls[0] == 6:
                    os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)
                return step(*args)
            return lose
        loop.make_step = make_step
    torch.manual_seed(0)
    fit(build_vae(z_dim=2, x_dim=16, hidden_dims=(8,)), _rank_data(), epochs=3, batch_size=16,
        out_dir=out / "run", device="cpu", seed=7, progress=False)


def _score_with_heavy_tails(rank, out):
    """Importance sampling sharded over the ranks, each logging as ``pvae`` does (rank 0 at
    INFO, the others at WARNING), with a guide whose tails are too light."""
    from linear_gaussian import ShiftedDiagonalGuide, make_problem, make_vae, sample_data
    from pvae import EvalConfig
    from pvae.runs.evaluation import estimate

    logging.basicConfig(filename=str(out / f"log{rank}.txt"), format="%(message)s",
                        level=logging.INFO if rank == 0 else logging.WARNING)
    W, b, sigma = make_problem()
    vae = make_vae(W, b, sigma, ShiftedDiagonalGuide(W, b, sigma, shift=0.5, widen=1.0))
    torch.manual_seed(11 + rank)
    estimate("is", vae, sample_data(W, b, sigma, 40), EvalConfig(eval_samples=200))


LOST = r", so rank 0 stops too; \S+/run/checkpoint.pt, of the last completed epoch, is " \
       r"intact: rerun with --resume \(the same command and settings\) to continue"


@pytest.mark.parametrize("how, says", [("kill", r"has exited \(.*(reset|closed) by peer"),
                                       ("stop", r"is stopped \(frozen\) \(Timed out")],
                         ids=["rank-killed", "rank-frozen"])
def test_a_lost_rank_is_one_line_and_the_checkpoint_resumes(tmp_path, how, says):
    """torchrun's two ranks as gloo processes on the CPU: rank 1 killed (or frozen) in epoch 2;
    rank 0 names it in one line, its epoch-1 checkpoint is intact and resumes."""
    from pvae.training import checkpoint

    outcomes = two_ranks(_train_and_lose_rank_1, tmp_path, how)
    assert re.fullmatch(rf"RankLost: rank 1 of 2 \(pid \d+\) {says}.*\){LOST}", outcomes[0]), \
        outcomes
    assert checkpoint.read(tmp_path / "run" / "checkpoint.pt").state.epoch == 1
    torch.manual_seed(0)
    state = fit(build_vae(z_dim=2, x_dim=16, hidden_dims=(8,)), _rank_data(), epochs=2,
                batch_size=16, out_dir=tmp_path / "run", resume=True, device="cpu", seed=7,
                progress=False)
    assert state.epoch == 2 and math.isfinite(state.history[-1].train_elbo)


def _never_trains(rank, out):
    """Rank 1 is stopped (frozen) before it joins the process group, so no rank gets here."""
    raise AssertionError(f"rank {rank} joined a group whose rank 1 is frozen")


_never_trains.rank_1_freezes_as_it_starts = True


def test_a_rank_frozen_as_it_starts_is_one_line(tmp_path):
    """Rank 1 frozen before the process group is formed: rank 0 gives up after the timeout
    (5 s) with one line instead of the store's DistStoreError."""
    outcomes = two_ranks(_never_trains, tmp_path)
    assert re.fullmatch(r"RankLost: one of the 2 ranks did not join the run \((?i:.*time.*)\), "
                        r"so rank 0 stops too; no epoch had run: rerun the command", outcomes[0]), \
        outcomes
    assert not (tmp_path / "run").exists()


def test_a_sharded_khat_warning_is_said_once_with_the_total(tmp_path):
    outcomes = two_ranks(_score_with_heavy_tails, tmp_path)
    assert outcomes == ["finished", "finished"]
    logs = "".join((tmp_path / f"log{r}.txt").read_text() for r in range(2))
    assert logs.count("PSIS k-hat > 0.7") == 1 and re.search(r"for \d+ of 40 examples", logs), logs
