"""Throughput of pvae's AIS (:func:`pvae.evaluate.ais`) against a hand-written AIS loop.

Both run the same algorithm on the same VAE and examples: the geometric path from the
encoder's q(z|x) to p(x, z) on the sigmoid schedule, C chains per example, one HMC move per
temperature with L leapfrog steps and the diagonal mass matrix from q's scale, log-weights
accumulated in float64. The hand-written loop is plain PyTorch (the encoder once, then the
decoder's log p(x|z) + log N(z; 0, I) and log q in closed form, gradients by autograd) with a
fixed step size; pvae's call is its full public one, pilot run for the step sizes included.
Throughput = leapfrog steps × chains × examples per second of CPU time; the two are
interleaved so that machine load hits both alike. Peak memory of pvae's AIS at 16 chains ×
1,000 examples is measured in a fresh process (VmHWM). ``--compile`` adds ``pvae-compiled``,
pvae's AIS with ``compile=True`` (``--ais-compile``: the log-joint compiled by torch.compile),
its compilations done in an untimed first call of the same shapes.

    python benchmarks/ais_throughput.py --checkpoint runs/mnist/checkpoint.pt --data-dir data
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pvae.evaluate import ais
from pvae.infer.annealing import schedule

sys.path.insert(0, str(Path(__file__).parent))
from evaluate_throughput import _status_mb, load_setup, plain_modules  # noqa: E402


def plain_ais(enc, dec, x: torch.Tensor, num_steps: int, num_chains: int, num_leapfrog: int,
              step_size: float = 0.2) -> torch.Tensor:
    """Hand-written batched AIS: log p(x) per example, float64."""
    log2pi = math.log(2 * math.pi)
    with torch.no_grad():
        loc, raw = enc(x)
        scale = F.softplus(raw) + 1e-5
    C, B = num_chains, x.shape[0]
    z = loc + scale * torch.randn(C, B, loc.shape[-1])
    xs = x.expand(C, B, x.shape[-1])

    def densities(z):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            log_p = (-F.binary_cross_entropy_with_logits(dec(z), xs, reduction="none").sum(-1)
                     - 0.5 * (z.pow(2) + log2pi).sum(-1))
            log_q = (-0.5 * (((z - loc) / scale).pow(2) + log2pi) - scale.log()).sum(-1)
            gp, = torch.autograd.grad(log_p.sum(), z)
            gq, = torch.autograd.grad(log_q.sum(), z)
        return log_p.detach().double(), log_q.detach().double(), gp, gq

    betas = schedule(num_steps, "sigmoid")
    lp, lq, gp, gq = densities(z)
    log_w = torch.zeros(C, B, dtype=torch.float64)
    step = step_size * scale
    for t in range(1, num_steps + 1):
        log_w += (betas[t] - betas[t - 1]).item() * (lp - lq)
        if t == num_steps:
            break
        beta = float(betas[t])
        r = torch.randn_like(z)
        h0 = -(beta * lp + (1 - beta) * lq) + 0.5 * r.double().pow(2).sum(-1)
        r = r + 0.5 * step * (beta * gp + (1 - beta) * gq)
        zn = z
        for i in range(num_leapfrog):
            zn = zn + step * r
            lpn, lqn, gpn, gqn = densities(zn)
            r = r + (1.0 if i < num_leapfrog - 1 else 0.5) * step * (beta * gpn + (1 - beta) * gqn)
        h1 = -(beta * lpn + (1 - beta) * lqn) + 0.5 * r.double().pow(2).sum(-1)
        take = torch.rand_like(h1) < torch.exp(torch.clamp(h0 - h1, max=0.0))
        z = torch.where(take[..., None], zn, z)
        lp, lq = torch.where(take, lpn, lp), torch.where(take, lqn, lq)
        gp, gq = torch.where(take[..., None], gpn, gp), torch.where(take[..., None], gqn, gq)
    return torch.logsumexp(log_w, 0) - math.log(C)


def memory_child(args) -> None:
    """Child process: resident memory before AIS and its peak during it, in MB."""
    vae, x, *_ = load_setup(args)
    ais(vae.model, vae.guide, x[:2], num_steps=2, num_chains=2, host=vae)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mb("VmHWM")
    ais(vae.model, vae.guide, x, num_steps=args.steps, num_chains=args.chains,
        num_leapfrog=args.leapfrog, host=vae)
    print(json.dumps({"rss_before_mb": before, "peak_mb": _status_mb("VmHWM")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=100, help="examples")
    ap.add_argument("--steps", type=int, default=20, help="intermediate distributions T")
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--leapfrog", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-n", type=int, default=1000)
    ap.add_argument("--hidden-dims", type=int, nargs="+", default=[200, 200])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true",
                    help="also time pvae's AIS with compile=True (compiled before timing)")
    ap.add_argument("--_memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._memory:
        return memory_child(args)
    vae, x, hidden, act, source = load_setup(args)
    enc, dec = plain_modules(vae, hidden, act)
    for p in (*enc.parameters(), *dec.parameters()):
        p.requires_grad_(False)
    T, C, L = args.steps, args.chains, args.leapfrog
    print(f"{source}: n={x.shape[0]}, T={T}, C={C}, L={L}, torch threads={args.threads}")
    work = T * L * C * x.shape[0]
    runs = {"pvae": lambda: ais(vae.model, vae.guide, x, num_steps=T, num_chains=C,
                                num_leapfrog=L, host=vae).log_px,
            "plain": lambda: plain_ais(enc, dec, x, T, C, L)}
    if args.compile:
        runs["pvae-compiled"] = lambda: ais(vae.model, vae.guide, x, num_steps=T, num_chains=C,
                                            num_leapfrog=L, host=vae, compile=True).log_px
        c0 = time.process_time()
        ais(vae.model, vae.guide, x, num_steps=2, num_chains=C, num_leapfrog=1, host=vae,
            compile=True)  # the same pass shapes: the timed runs reuse these graphs
        print(f"pvae-compiled: compilation (a 2-step run) {time.process_time() - c0:.1f} CPU s")
    cpu, means = {name: [] for name in runs}, {}
    ais(vae.model, vae.guide, x[:4], num_steps=3, num_chains=2, host=vae)
    plain_ais(enc, dec, x[:4], 3, 2, L)
    for _ in range(args.repeats):
        for name, fn in runs.items():
            c0 = time.process_time()
            means[name] = float(fn().mean())
            cpu[name].append(time.process_time() - c0)
    rate = {k: work / statistics.median(v) for k, v in cpu.items()}
    for name in runs:
        print(f"{name:>13}: {rate[name]:10.0f} leapfrog steps x chains x examples per CPU-second "
              f"(runs {', '.join(f'{t:.1f}' for t in cpu[name])} s); mean log p(x) "
              f"{means[name]:.2f}")
    for name in (n for n in runs if n != "plain"):
        print(f" ratio {name} / plain: {rate[name] / rate['plain']:.3f} "
              "(pvae's time includes its pilot run, T/10 steps at min(C, 4) chains)")
    cmd = [sys.executable, __file__, "--_memory", "--n", str(args.memory_n), "--steps", "3",
           "--chains", "16", "--leapfrog", str(L), "--hidden-dims", *map(str, args.hidden_dims)]
    for flag in ("checkpoint", "data_dir"):
        if getattr(args, flag):
            cmd += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    mem = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True)
                     .stdout.strip().splitlines()[-1])
    print(f"memory: AIS with 16 chains x {args.memory_n} examples (default chunk) in a fresh "
          f"process: peak resident {mem['peak_mb']:.0f} MB, "
          f"{mem['peak_mb'] - mem['rss_before_mb']:.0f} MB above the loaded model")


if __name__ == "__main__":
    main()
