"""The fast training path keeps the numbers: test ELBO after E epochs, fast vs SVI path.

Trains the default VAE twice from the same initial weights and seed, once with
``fit(fast=True)`` (one fused torch Adam) and once with ``fit(fast=False)``
(``pyro.infer.SVI`` + ``pyro.optim.Adam``), and prints both test ELBOs (K = 1, β = 1, on
the binarized test set) and their difference.

    python benchmarks/fast_path_elbo.py --epochs 5
"""
from __future__ import annotations

import argparse
import time

import pyro
import torch

from pvae.data import load_mnist
from pvae.train import fit
from pvae.vae import build_vae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = load_mnist(args.data_dir, binarize=True, train_subset=args.train_subset)
    rows = []
    for fast in (True, False):
        pyro.clear_param_store()
        torch.manual_seed(args.seed)
        vae = build_vae()
        tic = time.perf_counter()
        result = fit(vae, data.train_x, epochs=args.epochs, test_x=data.test_x, device="cpu",
                     seed=args.seed, progress=False, fast=fast)
        rows.append((fast, result.history[-1].test_elbo, time.perf_counter() - tic))
    for fast, elbo, seconds in rows:
        print(f"{'fast (fused Adam)' if fast else 'SVI + pyro.optim.Adam':<24} test ELBO "
              f"{elbo:9.3f}  {seconds:6.1f} s")
    print(f"difference fast − SVI: {rows[0][1] - rows[1][1]:+.3f} nats per image "
          f"({args.epochs} epochs, {data.train_x.shape[0]} training images)")


if __name__ == "__main__":
    main()
