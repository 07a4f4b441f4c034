"""Epochs that fit a CPU budget: the CPU time of one training step of each row of the
literature table (docs/results.rst), and how many full MNIST epochs (600 steps of 100
images) that budget buys.

Each configuration is built from seed 0, stepped 3 times untimed, then ``--steps`` times on
one batch of 100 training images, one torch thread, timed by ``time.process_time``:

    python benchmarks/row_budget.py --budget-minutes 10

The table's rows then run with ``epochs=`` set a little below the printed number (the
per-epoch test ELBO, the shuffle and the binarization cost a few per cent more).
"""
from __future__ import annotations

import argparse
import time

import pyro
import torch

from pvae.data import load_mnist
from pvae.infer.objectives import make_loss
from pvae.model.vae import build_vae
from pvae.training.step import make_optimizer, make_step

TWO = dict(stochastic_layers=2, z_dim=100)
ROWS = {  # name: (build_vae arguments, loss, particles)
    "1 layer, VAE, k = 1": ({}, "elbo", 1),
    "1 layer, VAE, k = 5": ({}, "elbo", 5),
    "1 layer, VAE, k = 50": ({}, "elbo", 50),
    "1 layer, IWAE, k = 5": ({}, "iwae", 5),
    "1 layer, IWAE, k = 50": ({}, "iwae", 50),
    "2 layers, VAE, k = 1": (TWO, "elbo", 1),
    "2 layers, VAE, k = 5": (TWO, "elbo", 5),
    "2 layers, VAE, k = 50": (TWO, "elbo", 50),
    "2 layers, IWAE, k = 5": (TWO, "iwae", 5),
    "2 layers, IWAE, k = 50": (TWO, "iwae", 50),
    "1 layer, VampPrior": (dict(prior="vamp"), "elbo", 1),
    "1 layer, IAF guide": (dict(guide="iaf"), "elbo", 1),
}


def step_seconds(kwargs: dict, loss: str, particles: int, x: torch.Tensor, steps: int) -> float:
    """CPU seconds of one optimisation step of this configuration on the batch ``x``."""
    pyro.set_rng_seed(0)
    vae = build_vae(**kwargs)
    step = make_step(vae, make_loss(loss, particles), make_optimizer(vae, 1e-3))
    for _ in range(3):
        step(x)
    tic = time.process_time()
    for _ in range(steps):
        step(x)
    return (time.process_time() - tic) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--budget-minutes", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    x = load_mnist(args.data_dir, binarize=True, train_subset=100).train_x.bernoulli()
    steps_per_epoch = 600
    print(f"| row | ms per step | s per epoch | epochs in {args.budget_minutes:g} CPU-min |")
    print("|---|---|---|---|")
    for name, (kwargs, loss, particles) in ROWS.items():
        s = step_seconds(kwargs, loss, particles, x, args.steps)
        epochs = args.budget_minutes * 60 / (s * steps_per_epoch)
        print(f"| {name} | {1000 * s:.1f} | {s * steps_per_epoch:.1f} | {epochs:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
