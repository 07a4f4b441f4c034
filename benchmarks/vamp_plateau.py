"""How long the VampPrior sits on the plateau where the encoder ignores its input.

Trains the default 784-200-200-50 VAE on the first N training images for E epochs, once per
variant below, from the same seed, and prints each epoch's test ELBO (K = 1, on the first
1000 binarized test images) and the active units at the end (latent dimensions whose
encoder mean varies over the test images with variance > 0.01). A test ELBO near −201 with
few active units is the plateau: the decoder draws the mean image and every q(z|x) is the
same, which zeroes the KL against a prior built from that same encoder.

    python benchmarks/vamp_plateau.py --train-subset 20000 --epochs 10

Variants: N(0, I); the VampPrior (500 pseudo-inputs) with the quick schedule; with lr 5e-4;
with pseudo-inputs started at training images; with a KL warm-up over 5 % or 50 % of the run
(the latter also from training images); with
the ``tomczak2018`` and ``burda2016`` recipes; with 50 pseudo-inputs; N(0, I) and the VampPrior
trained at β = 0.01 throughout (a KL a hundred times lighter); and, as a diagnostic
that is not the published prior, with the encoder's weights cut from the gradient inside
the prior (the pseudo-inputs still learn through it), so that the KL cannot make the
encoder input-independent through p(z).
"""
from __future__ import annotations

import argparse
import time

import pyro
import torch
from torch.func import functional_call

from pvae.data import load_mnist
from pvae.model.vae import build_vae
from pvae.training.loop import fit
from pvae.training.recipes import get_recipe

VARIANTS = {
    "standard, quick": dict(prior="standard"),
    "vamp, quick": dict(prior="vamp"),
    "vamp, lr 5e-4": dict(prior="vamp", lr=5e-4),
    "vamp, u from data": dict(prior="vamp", data_init=True),
    "vamp, warm-up 5%": dict(prior="vamp", warmup_fraction=0.05),
    "vamp, warm-up 50%": dict(prior="vamp", warmup_fraction=0.5),
    "vamp, warm-up 50%, u from data": dict(prior="vamp", warmup_fraction=0.5, data_init=True),
    "vamp, tomczak2018": dict(prior="vamp", recipe="tomczak2018"),
    "vamp, burda2016": dict(prior="vamp", recipe="burda2016"),
    "vamp, K = 50": dict(prior="vamp", num_pseudo_inputs=50),
    "standard, β = 0.01": dict(prior="standard", beta=0.01),
    "vamp, β = 0.01": dict(prior="vamp", beta=0.01),
    "vamp, encoder cut in p(z)": dict(prior="vamp", cut=True),
}


class _CutEncoder:
    """The encoder with its weights detached: q(z|u) as a function of u alone."""

    def __init__(self, encoder):
        self.encoder = encoder

    def __call__(self, u):
        params = {k: v.detach() for k, v in self.encoder.named_parameters()}
        return functional_call(self.encoder, params, (u,))


def run(name: str, spec: dict, data, epochs: int) -> dict:
    spec = dict(spec)
    recipe = get_recipe(spec.pop("recipe", "quick"))
    # the recipe sets Adam's ε, the schedule and (tomczak2018, burda2016) the rate and the
    # warm-up; a variant's own rate or warm-up only goes with the quick recipe
    train = {"recipe": recipe.name}
    if "lr" in spec:
        train["lr"] = spec.pop("lr")
    if "warmup_fraction" in spec:
        train["beta_warmup_epochs"] = spec.pop("warmup_fraction") * epochs
    data_init = spec.pop("data_init", recipe.pseudo_inputs == "data")
    cut = spec.pop("cut", False)
    pyro.set_rng_seed(0)
    vae = build_vae(**spec)
    if data_init:
        vae.prior.start_at(data.train_x, torch.Generator().manual_seed(0))
    if cut:
        object.__setattr__(vae.prior, "encoder", _CutEncoder(vae.q))
    tic = time.perf_counter()
    state = fit(vae, data.train_x, epochs=epochs, **train, test_x=data.test_x, seed=0,
                progress=False, device="cpu")
    with torch.no_grad():
        loc = vae.q.encode(data.test_x)[0]
    return {"name": name, "test_elbo": [r.test_elbo for r in state.history],
            "active": int((loc.var(0) > 0.01).sum()), "seconds": time.perf_counter() - tic}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_mnist(args.data_dir, binarize=True, train_subset=args.train_subset,
                      test_subset=1000)
    print(f"| variant | test ELBO after each of {args.epochs} epochs | active units | s |")
    print("|---|---|---|---|")
    for name in args.variants:
        r = run(name, VARIANTS[name], data, args.epochs)
        curve = ", ".join(f"{v:.1f}" for v in r["test_elbo"])
        print(f"| {name} | {curve} | {r['active']} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
