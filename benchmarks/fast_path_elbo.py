"""fit's training path keeps the numbers of Pyro's SVI: test ELBO after E epochs, both ways.

Trains the default VAE twice from the same initial weights, seed, minibatches and epochs:
once with ``pvae.training.loop.fit`` (the objective's ``differentiable_loss``, one fused torch
Adam) and once with the SVI loop below (``pyro.infer.SVI`` + ``pyro.optim.Adam`` on
``vae.model``/``vae.guide``, whose ``pyro.param`` statements hand SVI the VAE's weights;
the update ``fit(fast=False)`` ran in earlier versions). Prints both test ELBOs (K = 1,
β = 1, on the binarized test set) and their difference.

    python benchmarks/fast_path_elbo.py --epochs 5
"""
from __future__ import annotations

import argparse
import time

import pyro
import torch
from pyro.infer import SVI

from pvae.data import load_mnist, minibatches
from pvae.infer.objectives import make_loss
from pvae.model.vae import build_vae
from pvae.training.loop import fit, mean_elbo


def svi_fit(vae, train_x, test_x, *, epochs, batch_size, lr, seed) -> float:
    """fit's loop with Pyro's SVI step: the same seeding, shuffles and per-batch binarization.

    Returns the test ELBO after the last epoch, computed as fit computes it (``mean_elbo``,
    whose draws come from a forked RNG, after every epoch as fit does).
    """
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), loss=make_loss("elbo", 1))
    elbo = float("nan")
    for epoch in range(1, epochs + 1):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # fit's shuffle seed
        with pyro.validation_enabled(False):
            for _, xb in minibatches(train_x, batch_size, gen, binarize=True):
                svi.step(xb)
        elbo = mean_elbo(vae, test_x)
    return elbo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = load_mnist(args.data_dir, binarize=True, train_subset=args.train_subset,
                      test_subset=args.test_subset)
    rows = []
    for name in ("fit (fused Adam)", "SVI + pyro.optim.Adam"):
        pyro.clear_param_store()
        torch.manual_seed(args.seed)
        vae = build_vae()
        tic = time.perf_counter()
        if name.startswith("fit"):
            result = fit(vae, data.train_x, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, test_x=data.test_x, device="cpu", seed=args.seed,
                         progress=False)
            elbo = result.history[-1].test_elbo
        else:
            elbo = svi_fit(vae, data.train_x, data.test_x, epochs=args.epochs,
                           batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        rows.append((name, elbo, time.perf_counter() - tic))
    for name, elbo, seconds in rows:
        print(f"{name:<24} test ELBO {elbo:9.3f}  {seconds:6.1f} s")
    print(f"difference fit − SVI: {rows[0][1] - rows[1][1]:+.3f} nats per image "
          f"({args.epochs} epochs, {data.train_x.shape[0]} training images, "
          f"{data.test_x.shape[0]} test images)")


if __name__ == "__main__":
    main()
