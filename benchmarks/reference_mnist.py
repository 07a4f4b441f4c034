"""Does pvae train as well as the same VAE written by hand in PyTorch?

Trains pvae's main job (``pvae.runs.experiment.run``) and a hand-written PyTorch loop with the
same architecture, initial weights, minibatches, dynamic binarization, loss (one-sample
−ELBO summed over the batch) and Adam settings; then scores both with the same
importance-sampled log p(x) on the same binarized test images, and prints the paired
difference with its standard error.

    python benchmarks/reference_mnist.py --epochs 5 --test-subset 1000 --eval-samples 1000
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pyro
import torch
import torch.nn.functional as F

from pvae.data import load_mnist, minibatches
from pvae.evaluate import importance_sampling
from pvae.model.vae import build_vae
from pvae.runs.config import RunConfig
from pvae.runs.experiment import run
from pvae.training.checkpoint import load

LOG2PI = math.log(2 * math.pi)


def neg_elbo(enc, dec, x: torch.Tensor) -> torch.Tensor:
    """−ELBO summed over the batch: one reparameterised z per example, no Pyro."""
    loc, raw = enc(x)
    scale = F.softplus(raw) + 1e-5
    eps = torch.randn_like(loc)
    z = loc + scale * eps
    log_lik = -F.binary_cross_entropy_with_logits(dec(z), x, reduction="none").sum(-1)
    log_prior = -0.5 * (z.pow(2) + LOG2PI).sum(-1)
    log_q = (-0.5 * (eps.pow(2) + LOG2PI) - scale.log()).sum(-1)
    return -(log_lik + log_prior - log_q).sum()


def train_reference(config: RunConfig, train_x: torch.Tensor):
    """The hand-written loop; returns a pvae VAE holding the trained weights, and seconds."""
    train = config.train
    pyro.clear_param_store()
    pyro.set_rng_seed(train.seed)
    vae = build_vae(z_dim=config.model.z_dim, hidden_dims=config.model.hidden_dims)
    enc, dec = vae.q.net, vae.likelihood.decoder
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=train.rate, eps=train.adam_eps)
    seconds = 0.0
    for epoch in range(1, train.epochs + 1):
        gen = torch.Generator().manual_seed(train.seed * 1_000_003 + epoch)
        tic = time.perf_counter()
        for _, xb in minibatches(train_x, train.batch_size, gen, binarize=True):
            opt.zero_grad(set_to_none=True)
            neg_elbo(enc, dec, xb).backward()
            opt.step()
        seconds += time.perf_counter() - tic
    return vae, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", default="runs/reference")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=1000)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    config = RunConfig.from_dict({  # {out}/pvae is this script's own
        "data_dir": args.data_dir, "out": f"{args.out}/pvae", "epochs": args.epochs,
        "train_subset": args.train_subset, "test_subset": args.test_subset,
        "eval_samples": args.eval_samples, "seed": args.seed, "device": "cpu",
        "progress": False, "overwrite": True})
    data = load_mnist(args.data_dir, binarize=True, train_subset=args.train_subset,
                      test_subset=args.test_subset)
    ref, ref_seconds = train_reference(config, data.train_x)
    pyro.set_rng_seed(config.train.seed + 1)
    ref_eval = importance_sampling(ref.model, ref.guide, data.test_x,
                                   num_samples=args.eval_samples, progress=False, host=ref)

    metrics = run(config)
    pvae_vae = load(f"{args.out}/pvae/checkpoint.pt", device="cpu")
    pyro.set_rng_seed(config.train.seed + 1)
    pvae_eval = importance_sampling(pvae_vae.model, pvae_vae.guide, data.test_x,
                                    num_samples=args.eval_samples, progress=False, host=pvae_vae)
    diff = np.asarray(pvae_eval.log_px, dtype=np.float64) - np.asarray(ref_eval.log_px)
    se = float(diff.std(ddof=1) / math.sqrt(len(diff)))
    print(f"{args.epochs} epochs, {data.train_x.shape[0]} training images, "
          f"{len(diff)} test images, K = {args.eval_samples}")
    print(f"{'':<22}{'log p(x)':>18}{'ELBO':>10}{'train s':>10}")
    print(f"{'pvae':<22}{pvae_eval.log_px_mean:>10.2f} ± {pvae_eval.log_px_stderr:<5.2f}"
          f"{pvae_eval.elbo_mean:>10.2f}{metrics['train_seconds']:>10.1f}")
    print(f"{'hand-written PyTorch':<22}{ref_eval.log_px_mean:>10.2f} ± {ref_eval.log_px_stderr:<5.2f}"
          f"{ref_eval.elbo_mean:>10.2f}{ref_seconds:>10.1f}")
    print(f"pvae − hand-written: {float(diff.mean()):+.2f} ± {se:.2f} nats (paired s.e.)")


if __name__ == "__main__":
    main()
