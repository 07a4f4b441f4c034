"""Data-parallel training and sharded evaluation on 2 CPU processes (gloo), on tiny data.

Each test spawns two ranks that run one worker function of this module and leave their
results in files; the assertions run here, against single-process references.
"""
import math
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from conftest import REPO
from linear_gaussian import ShiftedDiagonalGuide, exact_log_px, make_problem, make_vae, sample_data

WORLD = 2
N, X_DIM, BATCH = 64, 16, 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, port, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PVAE_DIST_TIMEOUT="60",
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from pvae import distributed

    with distributed.process_group("cpu"):
        fn(rank, *args)


def spawn(fn, *args, timeout: float = 120):
    """Run ``fn(rank, *args)`` on 2 gloo ranks; fail (not hang) after ``timeout`` seconds."""
    ctx = mp.start_processes(_entry, args=(fn, free_port(), args), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the ranks did not finish within {timeout} s")


def data():
    g = torch.Generator().manual_seed(3)
    return torch.bernoulli(torch.rand(N, X_DIM, generator=g), generator=g)


def tiny_vae(guide="mlp"):
    from pvae import build_vae

    torch.manual_seed(0)
    return build_vae(guide=guide, z_dim=2, x_dim=X_DIM, hidden_dims=(8,),
                     num_data=N if guide == "local" else None)


def _gradients(rank, out):
    from pyro.infer import Trace_ELBO
    from torch.nn.parallel import DistributedDataParallel

    from pvae.data import minibatches
    from pvae.training.loop import LossModule

    for guide in ("mlp", "local"):
        vae = tiny_vae(guide)
        idx, xb = next(minibatches(data(), BATCH, torch.Generator().manual_seed(5), False,
                                   rank=rank, world_size=WORLD))
        scale = WORLD if vae.amortized else 1.0
        ddp = DistributedDataParallel(LossModule(vae, Trace_ELBO(), scale))
        torch.manual_seed(100 + rank)
        with vae.direct_params():
            ddp(*((xb,) if vae.amortized else (xb, idx))).backward()
        grads = {n: p.grad.clone() for n, p in vae.named_parameters()}
        torch.save({"idx": idx, "grads": grads}, out / f"grad-{guide}-{rank}.pt")


def _every_worker(rank, out):
    _gradients(rank, out)
    _fit(rank, out, 0)
    _fit(rank, out, 2)
    _refuse(rank, out)
    _evaluate(rank, out)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """The folder where both ranks left the results of every worker (one spawn: seconds)."""
    out = tmp_path_factory.mktemp("ranks")
    spawn(_every_worker, out, timeout=180)
    return out


@pytest.mark.parametrize("guide", ["mlp", "local"])
def test_a_distributed_step_has_the_global_batch_gradient_with_the_same_noise(spawned, guide):
    from pyro.infer import Trace_ELBO

    from pvae.data import minibatches

    ranks = [torch.load(spawned / f"grad-{guide}-{r}.pt") for r in range(WORLD)]
    global_idx, _ = next(minibatches(data(), BATCH, torch.Generator().manual_seed(5), False))
    assert sorted(torch.cat([r["idx"] for r in ranks]).tolist()) == sorted(global_idx.tolist())
    vae = tiny_vae(guide)
    # The single-process loss of the global batch, each example with the noise its rank drew:
    # the sum over examples (amortized) or (N/B)·sum (local guide, plate of size N).
    for r, rank in enumerate(ranks):
        torch.manual_seed(100 + r)
        xb = data()[rank["idx"]]
        args = (xb,) if vae.amortized else (xb, rank["idx"])
        loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, *args)
        (loss if vae.amortized else loss * (BATCH // WORLD) / BATCH).backward()
    for name, p in vae.named_parameters():
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], p.grad, rtol=1e-5, atol=1e-6)
    assert all(float(p.grad.abs().sum()) > 0 for p in vae.parameters())


def _fit(rank, out, fail_at):
    out = out / f"fit-fail{fail_at}"
    out.mkdir(exist_ok=True)
    import pvae.training.checkpoint
    import pvae.training.loop
    from pvae import fit
    from pvae.errors import DivergenceError

    saves = []
    real_save = pvae.training.checkpoint.save
    pvae.training.checkpoint.save = lambda *a, **k: (saves.append(1), real_save(*a, **k))
    if fail_at and rank == 1:  # this rank alone sees a NaN loss at step fail_at
        real_make_step = pvae.training.loop.make_step

        def make_step(*a, **k):
            step, count = real_make_step(*a, **k), [0]

            def nan_at(*args):
                count[0] += 1
                loss = step(*args)
                return math.nan if count[0] == fail_at else loss
            return nan_at
        pvae.training.loop.make_step = make_step
    vae = tiny_vae()
    result = {}
    try:
        state = fit(vae, data(), epochs=2, batch_size=BATCH, test_x=data()[:10],
                    out_dir=out / "run", device="cpu", seed=7, progress=False)
        state = fit(vae, data(), epochs=3, batch_size=BATCH, out_dir=out / "run", resume=True,
                    test_x=data()[:10], device="cpu", seed=7, progress=False)
        result.update(history=state.history, weights=vae.state_dict())
    except DivergenceError as err:
        result["error"] = str(err)
    result["saves"] = len(saves)
    torch.save(result, out / f"fit-{rank}.pt")


def test_two_ranks_keep_identical_weights_write_one_checkpoint_and_resume(spawned):
    from pvae.training import checkpoint

    out = spawned / "fit-fail0"
    ranks = [torch.load(out / f"fit-{r}.pt", weights_only=False) for r in range(WORLD)]
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
    assert [r["saves"] for r in ranks] == [3, 0]  # 2 epochs, then 1 resumed epoch, by rank 0
    ckpt = checkpoint.read(out / "run" / "checkpoint.pt")
    assert ckpt.state.epoch == 3 and ckpt.state.step == 3 * N // BATCH
    for name, value in ckpt.weights.items():
        assert torch.equal(value, ranks[0]["weights"][name]), name
    same = [[(r.epoch, r.step, r.train_elbo, r.test_elbo) for r in rank["history"]]
            for rank in ranks]  # the ranks agree on the global numbers (not on the seconds)
    assert same[0] == same[1] and len(same[0]) == 3
    assert all(math.isfinite(r.train_elbo) and r.train_elbo < 0 for r in ranks[0]["history"])
    start = tiny_vae().state_dict()
    assert any(not torch.equal(start[k], v) for k, v in ranks[0]["weights"].items())


def test_a_nan_loss_on_one_rank_stops_both_ranks_without_a_hang(spawned):
    out = spawned / "fit-fail2"
    ranks = [torch.load(out / f"fit-{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in ranks:
        assert "epoch 1, step 2: the loss is nan" in r["error"]


def _refuse(rank, out):
    from pvae import distributed
    from pvae.errors import DataError

    try:
        with distributed.together("loading the data"):
            if rank == 1:
                raise DataError("rank 1 cannot read its file")
        outcome = "went on"
    except distributed.RankFailed as err:
        outcome = f"RankFailed: {err}"
    except DataError as err:
        outcome = f"DataError: {err}"
    (out / f"refuse-{rank}.txt").write_text(outcome)
    from pvae import fit
    from pvae.errors import ConfigError

    try:
        fit(tiny_vae(), data(), epochs=1, batch_size=15, device="cpu", progress=False)
    except ConfigError as err:
        (out / f"batch-{rank}.txt").write_text(str(err))


def test_an_error_on_one_rank_is_an_error_on_every_rank(spawned):
    assert (spawned / "refuse-1.txt").read_text() == "DataError: rank 1 cannot read its file"
    assert (spawned / "refuse-0.txt").read_text().startswith(
        "RankFailed: 1 other rank(s) failed while loading the data")
    for rank in range(WORLD):  # the same refusal on every rank, before any collective training
        assert (spawned / f"batch-{rank}.txt").read_text().startswith(
            "batch_size 15 is the global batch of 2 ranks and must be a multiple of 2")


def mild_guide(W, b, sigma):
    return ShiftedDiagonalGuide(W, b, sigma, shift=0.2, widen=1.2)


def _evaluate(rank, out):
    import numpy as np
    import pyro

    from pvae import EvalConfig, distributed
    from pvae.evaluate import ais
    from pvae.runs.evaluation import estimate, gather_result

    W, b, sigma = make_problem(z_dim=2, x_dim=5, sigma=0.5)
    x = sample_data(W, b, sigma, 101)
    pyro.set_rng_seed(11 + rank)
    exact = estimate("is", make_vae(W, b, sigma), x, EvalConfig(eval_samples=20))
    shifted = estimate("is", make_vae(W, b, sigma, mild_guide(W, b, sigma)), x,
                       EvalConfig(eval_samples=200))
    vae = make_vae(W, b, sigma)
    annealed = gather_result(ais(vae.model, vae.guide, distributed.shard(x), num_steps=3,
                                 num_chains=2, num_leapfrog=2))
    order = distributed.gather(distributed.shard(torch.arange(7.0)) * 10)
    order_np = distributed.gather(distributed.shard(np.arange(7)) + 1)
    torch.save({"exact": exact, "shifted": shifted, "annealed": annealed, "order": order, "order_np": order_np,
                "shard": len(distributed.shard(x))}, out / f"eval-{rank}.pt")


def test_sharded_evaluation_equals_unsharded(spawned):
    import numpy as np
    import pyro

    from pvae.evaluate import importance_sampling

    ranks = [torch.load(spawned / f"eval-{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [r["shard"] for r in ranks] == [51, 50]
    for r in ranks:
        assert r["order"].tolist() == [0.0, 10, 20, 30, 40, 50, 60]
        assert r["order_np"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    W, b, sigma = make_problem(z_dim=2, x_dim=5, sigma=0.5)
    x = sample_data(W, b, sigma, 101)
    truth = exact_log_px(x, W, b, sigma).numpy()
    for r in ranks:  # the exact posterior as guide: IS is exact, so sharding must not change it
        assert r["exact"].n == 101
        np.testing.assert_allclose(r["exact"].log_px, truth, rtol=0, atol=1e-8)
        np.testing.assert_array_equal(r["shifted"].log_px, ranks[0]["shifted"].log_px)
        # AIS from the exact posterior is exact too: gathered in order, every example once
        assert r["annealed"].n == 101 and r["annealed"].log_weights.shape == (101, 2)
        np.testing.assert_allclose(r["annealed"].log_px.numpy(), truth, rtol=0, atol=1e-8)
    pyro.set_rng_seed(11)
    vae = make_vae(W, b, sigma, mild_guide(W, b, sigma))
    whole = importance_sampling(vae.model, vae.guide, x, num_samples=200, progress=False)
    diff = ranks[0]["shifted"].log_px - whole.log_px  # Monte Carlo noise only, mean zero
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(diff))
    pyro.set_rng_seed(12)
    again = importance_sampling(vae.model, vae.guide, x, num_samples=200, progress=False)
    assert 0 < diff.std() < 2 * (again.log_px - whole.log_px).std()  # the noise of a rerun


def test_torchrun_trains_and_rank_0_alone_writes_and_reports(tmp_path):
    """``torchrun --nproc_per_node 2 examples/mnist_svi.py`` on a small .npy of one's own
    (resuming under two ranks is tested through ``fit`` above)."""
    import json

    import numpy as np

    g = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", (g.random((220, 8, 8)) < 0.3).astype(np.uint8))
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--standalone", str(REPO / "examples" / "mnist_svi.py"), "--dataset",
            tmp_path / "x.npy", "--out", tmp_path / "run", "--hidden-dims", 8, "--z-dim", 2,
            "--batch-size", 20, "--eval-samples", 10, "--device", "cpu", "--no-progress",
            "--epochs", 1]
    base = [str(a) for a in base]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(base, capture_output=True, text=True, timeout=240, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["n_test"] == 22 and metrics["n_train"] == 198
    assert metrics["steps"] == math.ceil(99 / 10) and metrics["config"]["dataset"].endswith("x.npy")
    assert math.isfinite(metrics["test_log_px"]) and metrics["test_log_px"] < 0
    assert done.stdout.count("wrote") == 1  # rank 0 alone reports the files
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".pvae.lock", "checkpoint.pt", "elbo_curves.png", "evaluation.png", "kl_per_dim.png",
        "latent.png", "metrics.json", "reconstructions.png", "samples.png", "test_log_px.npy",
        "traversals.png"]
