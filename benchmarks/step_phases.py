"""Where a training step's time goes: loss (forward), backward and optimizer, pvae vs hand-written.

For the step ``pvae.training.loop.fit`` runs (the objective's ``differentiable_loss`` inside
``vae.direct_params()``, ``backward``, one fused Adam) and the hand-written PyTorch step of
``train_step.py``, times each phase separately (process CPU time, one torch thread),
interleaved over rounds, and counts the Python function calls per step with cProfile.
The difference in the forward phase is what Pyro's tracing costs (messages, traces,
generic log-densities); backward and optimizer differ by the graph's extra nodes and by
fused vs for-loop Adam.

    python benchmarks/step_phases.py --batch-size 128
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step as ts  # noqa: E402  (the shared network, data and reference step)

from pvae.infer.objectives import make_loss  # noqa: E402
from pvae.model.vae import build_vae  # noqa: E402
from pvae.training.step import make_optimizer  # noqa: E402

PHASES = ("loss", "backward", "optimizer")


def contenders(net, lr):
    """``{name: (loss_fn, optimizer)}`` for the hand-written and the pvae step."""
    ref = ts.TorchVAE(**net)
    vae = build_vae(**net)
    objective = make_loss("elbo")

    def pvae_loss(x):
        with vae.direct_params():
            return objective.differentiable_loss(vae.model, vae.guide, x)

    return {"torch": (ref.loss, torch.optim.Adam(ref.parameters(), lr=lr)),
            "pvae": (pvae_loss, make_optimizer(vae, lr))}


def one_step(loss_fn, opt, x):
    t0 = time.process_time()
    loss = loss_fn(x)
    t1 = time.process_time()
    loss.backward()
    t2 = time.process_time()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return t1 - t0, t2 - t1, time.process_time() - t2


def calls_per_step(loss_fn, opt, xs, steps=50):
    prof = cProfile.Profile()
    prof.enable()
    for i in range(steps):
        one_step(loss_fn, opt, xs[i % len(xs)])
    prof.disable()
    return pstats.Stats(prof).total_calls / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--net", choices=sorted(ts.NETS), default="default")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--steps", type=int, default=5, help="steps per contender per round")
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    xs = ts.batches(args.batch_size)
    runs = contenders(ts.NETS[args.net], args.lr)
    times = {(name, phase): [] for name in runs for phase in PHASES}
    with pyro.validation_enabled(False):
        for name, (loss_fn, opt) in runs.items():
            for i in range(15):
                one_step(loss_fn, opt, xs[i % len(xs)])
        for r in range(args.rounds):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                loss_fn, opt = runs[name]
                acc = [0.0, 0.0, 0.0]
                for i in range(args.steps):
                    acc = [a + b for a, b in zip(acc, one_step(loss_fn, opt, xs[i % len(xs)]))]
                for phase, seconds in zip(PHASES, acc):
                    times[name, phase].append(1e3 * seconds / args.steps)
        calls = {name: calls_per_step(loss_fn, opt, xs) for name, (loss_fn, opt) in runs.items()}
    print(f"net {args.net}, batch {args.batch_size}: median CPU ms per step over {args.rounds} "
          f"interleaved rounds of {args.steps} steps")
    print(f"{'phase':<11}{'torch':>8}{'pvae':>8}{'pvae − torch':>14}")
    totals = {name: 0.0 for name in runs}
    for phase in PHASES:
        t, v = (statistics.median(times[name, phase]) for name in ("torch", "pvae"))
        totals["torch"] += t
        totals["pvae"] += v
        print(f"{phase:<11}{t:8.2f}{v:8.2f}{v - t:+14.2f}")
    t, v = totals["torch"], totals["pvae"]
    print(f"{'sum':<11}{t:8.2f}{v:8.2f}{v - t:+14.2f}   (ratio {v / t:.3f})")
    print(f"Python function calls per step: torch {calls['torch']:.0f}, pvae {calls['pvae']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
