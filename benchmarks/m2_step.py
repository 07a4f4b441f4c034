"""Step time of the semi-supervised M2 model against the unsupervised VAE and hand-written PyTorch.

Contenders, all on pvae's default nets (784-200-200 tanh encoder and decoder, z of 50; for M2
the encoder reads [x, one-hot y], the decoder [z, one-hot y], and a classifier MLP
784-200-200-10 gives q(y|x)), one optimisation step each on a batch of B unlabelled images:

* ``vae``:        the unsupervised step ``pvae.fit`` runs (``Trace_ELBO``), the reference of
                  what enumeration costs;
* ``m2``:         the M2 step ``pvae.fit`` runs on unlabelled data: ``TraceEnum_ELBO`` with
                  y ~ q(y|x) enumerated in parallel (``make_step`` on a VAE with
                  ``supervision="semi"``);
* ``m2-torch``:   M2 written by hand in PyTorch: the 10 classes as one batched call of the
                  encoder and of the decoder ((10, B, ·) tensors), the loss
                  −Σ_b [Σ_y q(y|x_b) (log p(x_b|y,z) + log p(y) + log p(z) − log q(z|x_b,y))
                  + H(q(y|x_b))] with one reparameterised z per class, ``torch.optim.Adam``.

They run in one process, interleaved (the order rotates every round), each round timing
``--steps`` steps of each after one untimed step; a ratio is the median over rounds of the
contender's time divided by the reference's time in the same round. Times are the process's
CPU time (``time.process_time``) with one torch thread. Do not read a timing off a loaded
machine: on a shared one, rerun where nothing else runs.

    python benchmarks/m2_step.py                   # a few minutes
    python benchmarks/m2_step.py --quick           # seconds: a smoke run
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pvae import build_vae, make_optimizer, make_step  # noqa: E402
from pvae.infer.objectives import make_loss  # noqa: E402

K, Z, HIDDEN = 10, 50, (200, 200)
LOG_2PI = math.log(2 * math.pi)


def mlp(sizes):
    layers = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Tanh(), nn.Linear(a, b))]
    return nn.Sequential(*layers[1:])


class HandM2(nn.Module):
    """M2 by hand: classifier, encoder of [x, y], decoder of [z, y]; the classes batched."""

    def __init__(self, x_dim=784):
        super().__init__()
        self.classifier = mlp([x_dim, *HIDDEN, K])
        self.encoder = mlp([x_dim + K, *HIDDEN, 2 * Z])
        self.decoder = mlp([Z + K, *HIDDEN, x_dim])

    def loss(self, x):
        b = x.shape[0]
        log_q_y = self.classifier(x).log_softmax(-1).T                     # (K, B)
        code = torch.eye(K, dtype=x.dtype)[:, None, :].expand(K, b, K)    # (K, B, K)
        h = self.encoder(torch.cat([x.expand(K, b, -1), code], -1))
        loc, scale = h[..., :Z], F.softplus(h[..., Z:]) + 1e-5
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        logits = self.decoder(torch.cat([z, code], -1))
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand(K, b, -1),
                                                     reduction="none").sum(-1)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_qz = (-0.5 * (eps.pow(2) + LOG_2PI) - scale.log()).sum(-1)
        inner = log_px + log_pz - log_qz - math.log(K)                     # log p(y) = −log K
        q = log_q_y.exp()
        return -(q * (inner - log_q_y)).sum()


def hand_contender(lr):
    net = HandM2()
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = net.loss(x)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def pvae_contender(lr, supervision):
    vae = build_vae(supervision=supervision, num_classes=K if supervision != "none" else None)
    step = make_step(vae, make_loss("elbo", 1, enumerated=supervision == "semi"),
                     make_optimizer(vae, lr))

    def run(x):
        with pyro.validation_enabled(False):
            return step(x)

    return run


BUILDERS = {"vae": lambda lr: pvae_contender(lr, "none"),
            "m2": lambda lr: pvae_contender(lr, "semi"), "m2-torch": hand_contender}


def bench(batch_size, args):
    torch.manual_seed(0)
    steps = {name: build(args.lr) for name, build in BUILDERS.items()}
    xs = [torch.bernoulli(torch.rand(batch_size, 784)) for _ in range(8)]
    names = list(steps)
    for name in names:
        for i in range(args.warmup):
            steps[name](xs[i % len(xs)])
    times = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            steps[name](xs[0])
            start = time.process_time()
            for i in range(args.steps):
                steps[name](xs[i % len(xs)])
            times[name].append((time.process_time() - start) / args.steps)
    return times


def report(batch_size, times):
    lines = []
    for name, ts in times.items():
        ms = 1000 * statistics.median(ts)
        ratios = {ref: [t / u for t, u in zip(ts, times[ref])] for ref in ("vae", "m2-torch")}
        cells = [f"{statistics.median(v):.2f} [{min(v):.2f}, {max(v):.2f}]"
                 for v in ratios.values()]
        lines.append(f"| {batch_size} | {name} | {ms:.2f} | {cells[0]} | {cells[1]} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 500])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="batch 100, 3 rounds of 2 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.rounds, args.steps, args.warmup = [100], 3, 2, 2
    torch.set_num_threads(args.threads)
    print("| batch | contender | CPU ms per step | / vae | / m2-torch |")
    print("|---|---|---|---|---|")
    for batch_size in args.batch_sizes:
        print("\n".join(report(batch_size, bench(batch_size, args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
