"""Non-amortized and semi-amortized inference, and the amortization-gap report (Cremer, Li &
Duvenaud 2018): log p(x) − L[q] = (log p(x) − L[q*]) + (L[q*] − L[q]), the approximation gap
plus the amortization gap, q* the best of the guide's own family for each x, fitted with the
decoder frozen; every ELBO is the β = 1 bound (the math: docs/amortization.rst)."""
import time
from dataclasses import dataclass

import pyro.poutine as poutine
import torch

from ..checks import check_count
from ..errors import ConfigError, DataError
from .hmc import latent_names
from .host import Encoder, prepare_examples
from .importance import log_likelihood
from .localfit import FAMILIES, TAILS, fit_local
from .logweights import log_weights
from .results import Estimate


@dataclass(frozen=True)
class GapReport(Estimate):
    """Per-example log p(x), L[q*], L[q] and the two gaps in nats (docs/amortization.rst)."""

    log_px: torch.Tensor
    log_px_proposal: str
    log_px_amortized: torch.Tensor
    elbo_local: torch.Tensor
    elbo_amortized: torch.Tensor
    seconds_amortized: float
    seconds_local: float
    num_samples: int
    elbo_samples: int
    local_steps: int
    local_converged: bool
    local_family: str = "normal"
    METRICS = (("n", "n", False), *((k, k, True) for k in (
        "log_px", "elbo_local", "elbo_amortized", "approximation_gap", "amortization_gap",
        "inference_gap", "log_px_amortized")),
        *((k, k, False) for k in (
            "seconds_per_example_amortized", "seconds_per_example_local", "log_px_proposal",
            "num_samples", "elbo_samples", "local_steps", "local_converged", "local_family",
            "local_family_description")))

    @property
    def approximation_gap(self) -> torch.Tensor:
        """log p(x) − L[q*] per example."""
        return self.log_px - self.elbo_local

    @property
    def amortization_gap(self) -> torch.Tensor:
        """L[q*] − L[q] per example."""
        return self.elbo_local - self.elbo_amortized

    @property
    def inference_gap(self) -> torch.Tensor:
        """log p(x) − L[q] = approximation gap + amortization gap, per example."""
        return self.log_px - self.elbo_amortized

    @property
    def seconds_per_example_amortized(self) -> float:
        """Wall seconds of one encoder pass, per example."""
        return self.seconds_amortized / self.n

    @property
    def seconds_per_example_local(self) -> float:
        """Wall seconds of the local fits, per example."""
        return self.seconds_local / self.n

    @property
    def local_family_description(self) -> str:
        """The family q* was fitted in, in words."""
        return FAMILIES[self.local_family]


def refine(vae: Encoder, x: torch.Tensor, steps: int = 5, lr: float = 1e-2,
           num_particles: int = 1, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Semi-amortized inference (Kim et al. 2018): the encoder's (loc, scale) for ``x`` (of a
    shared flow's base) after exactly ``steps`` Adam steps on each ELBO, the decoder frozen."""
    check_count("steps", steps)
    fit = fit_local(vae.model, x, host=vae, init="encoder", num_particles=num_particles, lr=lr,
                    max_steps=steps, patience=None, window=steps, progress=progress,
                    elbo_samples=1, desc="refine")
    return fit.loc, fit.scale


def gap_report(vae: Encoder, x: torch.Tensor, *, n: int | None = None,
               num_samples: int = 5000, elbo_samples: int = 1000,
               log_px_proposal: str = "mixture", chunk_size: int | None = None,
               progress: bool = True, **fit_kwargs) -> GapReport:
    """log p(x) (``num_samples`` draws from ``log_px_proposal``: ``"amortized"`` q, ``"local"``
    q* or ``"mixture"`` ½q + ½q*), L[q*] and L[q] (``elbo_samples`` draws) of the first ``n``
    examples of ``x`` (default: all); ``fit_kwargs`` go to :func:`fit_local`. For a VAE without
    encoder, q* starts at N(0, I) whatever ``init``, the mixture is ½q* + ½t₃(q*), and L[q],
    log p(x) under q and the amortization gap are NaN: only the approximation gap is defined."""
    if not isinstance(vae, Encoder):
        raise ConfigError(f"gap_report needs a VAE, got {type(vae).__name__}")
    if log_px_proposal not in ("mixture", "amortized", "local") or (
            log_px_proposal == "amortized" and not vae.amortized):
        raise ConfigError(f"log_px_proposal must be 'mixture', 'local' or (with an encoder) "
                          f"'amortized', got {log_px_proposal!r}")
    check_count("num_samples", num_samples)
    check_count("n", n, allow_none=True)
    x, _, _ = prepare_examples(vae, x)
    if n is not None and n > x.shape[0]:
        raise DataError(f"asked for {n} examples but the data have only {x.shape[0]}; "
                        f"use n <= {x.shape[0]}")
    x = x[:n]
    with torch.no_grad(), poutine.block():
        latent = latent_names(poutine.trace(vae.model).get_trace(x[:1]))
    if latent != ["z"]:
        raise ConfigError(f"the amortization gap is implemented for one stochastic layer; this "
                          f"model samples {latent} (with two layers the local q* would need "
                          "q(z2|z) too)")
    init = fit_kwargs.pop("init", "encoder")
    fit = fit_local(vae.model, x, host=vae, init=init if vae.amortized else "prior",
                    elbo_samples=elbo_samples, chunk_size=chunk_size, progress=progress,
                    **fit_kwargs)
    amortized = _amortized(vae, x, num_samples, elbo_samples, chunk_size)
    proposal = {"local": fit.guide(), "mixture": fit.guide(vae.q) if vae.amortized
                else fit.guide(tails=TAILS)}.get(log_px_proposal)
    lp = amortized[0] if proposal is None else log_likelihood(
        lambda x_, idx_: vae.model(x_), proposal, x, torch.arange(x.shape[0], device=x.device),
        num_samples=num_samples, chunk_size=chunk_size)
    return GapReport(log_px=lp.to(fit.elbo), log_px_proposal=log_px_proposal,
                     log_px_amortized=amortized[0].to(fit.elbo), elbo_local=fit.elbo,
                     elbo_amortized=amortized[1].to(fit.elbo), seconds_amortized=amortized[2],
                     seconds_local=fit.seconds, num_samples=num_samples,
                     elbo_samples=elbo_samples, local_steps=fit.steps,
                     local_converged=fit.converged, local_family=fit.family)


def _amortized(vae: Encoder, x: torch.Tensor, num_samples: int, elbo_samples: int,
               chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """log p(x) by IS from q, L[q] and the seconds of one encoder pass (NaN without encoder)."""
    if not vae.amortized:
        nan = torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
        return nan, nan, float("nan")
    with torch.no_grad():
        start = time.perf_counter()
        vae.q(x)
        seconds = time.perf_counter() - start
        elbo = log_weights(vae.model, vae.guide, x, elbo_samples,
                           chunk_size=chunk_size).mean(0)
    return log_likelihood(vae.model, vae.guide, x, num_samples=num_samples,
                          chunk_size=chunk_size), elbo, seconds
