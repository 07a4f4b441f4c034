"""Importance-sampled log p(x) per example, the test ELBO, and PSIS k-hat.

From the K log-weights log w_k of each example (:mod:`pvae.weights`, unscaled: the β = 1
model), log p(x) ≈ logsumexp_k log w_k − log K, a lower bound in expectation rising with K
toward log p(x) (Burda et al.), and ELBO(x) ≈ mean_k log w_k. PSIS k-hat (Vehtari et al.)
above 0.7 says the estimate for that example cannot be trusted. The proposal is the guide, or
(``proposal="refined"``) a per-example fit that makes the weights tighter. Annealed importance
sampling and BDMC (:mod:`pvae.ais`: :func:`ais`, :func:`ais_log_likelihood`, :func:`bdmc`)
are re-exported here. ``x`` and the tensors cut with it move to the model's device
(:func:`pvae.weights.prepare_examples`)."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyro
import torch

from .ais import AISResult, BDMCResult, ais, ais_log_likelihood, bdmc
from .diagnostics import KHAT_BAD, psis_khat, stderr
from .errors import ConfigError
from .localfit import fit_local, is_vae, local_guide
from .weights import (DEFAULT_CHUNK_SIZE, check_count, check_pair, default_chunk_size,
                      log_weights, map_examples, prepare_examples)

__all__ = ["log_likelihood", "evaluate", "EvalResult", "refined_pair", "psis_khat", "KHAT_BAD",
           "DEFAULT_CHUNK_SIZE", "DEFAULT_BATCH_SIZE", "PROPOSALS", "ais", "ais_log_likelihood",
           "bdmc"]  # AISResult and BDMCResult are importable here too; documented in pvae.ais

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100
"""Examples whose K log-weights :func:`evaluate` keeps at once (K × 100 float64 numbers)."""
_METRICS = ("test_elbo", "test_elbo_stderr", "test_log_px", "test_log_px_stderr",
            "eval_samples", "n_test", "psis_khat_max", "psis_khat_frac_bad", "eval_proposal",
            "eval_seconds", "eval_cpu_seconds")
PROPOSALS = ("encoder", "refined")


@dataclass(frozen=True)
class EvalResult:
    """Per-example results, float64 arrays of length n: ``log_px`` and ``elbo`` as above,
    ``ess`` = (Σ_k w_k)² / Σ_k w_k² in [1, K], ``khat`` (:func:`psis_khat`)."""

    log_px: np.ndarray
    elbo: np.ndarray
    ess: np.ndarray
    khat: np.ndarray
    num_samples: int
    proposal: str = "encoder"
    seconds: float = math.nan
    cpu_seconds: float = math.nan

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.log_px.shape[0])

    @property
    def log_px_mean(self) -> float:
        """Mean log p(x) estimate over the examples (nats per example)."""
        return float(self.log_px.mean())

    @property
    def log_px_stderr(self) -> float:
        """Standard error of :attr:`log_px_mean`: std / sqrt(n) (0 for one example)."""
        return stderr(self.log_px)

    @property
    def elbo_mean(self) -> float:
        """Mean ELBO estimate over the examples."""
        return float(self.elbo.mean())

    @property
    def elbo_stderr(self) -> float:
        """Standard error of :attr:`elbo_mean`."""
        return stderr(self.elbo)

    @property
    def khat_max(self) -> float:
        """Largest k-hat over the examples (NaN if no example had a fit)."""
        finite = self.khat[~np.isnan(self.khat)]
        return float(finite.max()) if finite.size else float("nan")

    @property
    def khat_frac_bad(self) -> float:
        """Fraction of examples with k-hat > 0.7 (unreliable estimates)."""
        return float(np.mean(self.khat > KHAT_BAD)) if self.n else 0.0

    @staticmethod
    def missing_metrics() -> dict:
        """The entries of :meth:`to_metrics` for a run with no test evaluation: all ``None``."""
        return dict.fromkeys(_METRICS)

    def to_metrics(self) -> dict:
        """The ``metrics.json`` entries this result fills (NaN becomes ``None``)."""
        values = (self.elbo_mean, self.elbo_stderr, self.log_px_mean, self.log_px_stderr,
                  int(self.num_samples), self.n, self.khat_max, self.khat_frac_bad, self.proposal,
                  self.seconds, self.cpu_seconds)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in zip(_METRICS, values)}


def _batches(model, guide, x, args, kwargs, num_samples, chunk_size, batch_size=None):
    """Check the call once; return K and the (K, b) log-weights of each run of ``batch_size``
    examples (None: as many as one pass of ``chunk_size`` draws holds), computed lazily."""
    num_samples = check_count("num_samples (K)", num_samples)
    chunk = check_count("chunk_size (latent draws per pass)", chunk_size, allow_none=True)
    x, args, kwargs = prepare_examples(model, x, *args, **kwargs)
    chunk = chunk or default_chunk_size(x.device)
    structure = check_pair(model, guide, x, *args, **kwargs)
    step = batch_size or max(1, chunk // num_samples)

    def weights():
        for start in range(0, x.shape[0], step):
            xb, a, kw = map_examples(lambda t: t[start:start + step], x, *args, **kwargs)
            yield log_weights(model, guide, xb, num_samples, *a, chunk_size=chunk,
                              structure=structure, **kw)

    return num_samples, weights()


def log_likelihood(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int,
                   chunk_size: int | None = None, **kwargs) -> torch.Tensor:
    """Importance-sampled log p(x) per example, (B,) float64 on x's device; a pass holds at
    most ``chunk_size`` latent draws (particles × examples; default
    :func:`pvae.weights.default_chunk_size` of the model's device)."""
    num_samples, batches = _batches(model, guide, x, args, kwargs, num_samples, chunk_size)
    with torch.no_grad(), pyro.validation_enabled(False):
        lse = torch.cat([torch.logsumexp(lw, dim=0) for lw in batches])
    return (lse - math.log(num_samples)).to(x.device)


def refined_pair(model: Callable, guide: Callable, x: torch.Tensor, *,
                 progress: bool = False, **fit_options) -> tuple[Callable, Callable, tuple]:
    """The refined IS proposal for a VAE's ``(vae.model, vae.guide)`` on ``x``: q*(z|x_n), the
    diagonal Gaussian fitted to each example's ELBO from the encoder's output with the model
    frozen (:func:`pvae.localfit.fit_local`, options ``fit_options``), mixed as ½q(z|x) + ½q*
    so that no weight exceeds twice q's (defensive importance sampling). Returns
    ``(model, proposal, args)``: score with ``log_likelihood(model, proposal, x, *args, ...)``."""
    vae = getattr(model, "__self__", None)
    if not (is_vae(vae) and getattr(guide, "__self__", None) is vae):
        raise ConfigError("proposal='refined' fits q* from a pvae VAE's encoder: pass "
                          "vae.model and vae.guide of one VAE (for another pair, fit a "
                          "proposal with pvae.localfit.fit_local and pass it as the guide)")
    if not vae.amortized:
        raise ConfigError("proposal='refined' starts each fit from the encoder; this VAE's guide "
                          "has per-example parameters and no encoder")
    fit = fit_local(vae, x, init="encoder", progress=progress, elbo_samples=1, **fit_options)
    idx = torch.arange(x.shape[0], device=fit.loc.device)
    return (lambda x_, idx_: vae.model(x_)), local_guide(fit.loc, fit.scale, vae.q), (idx,)


def evaluate(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int,
             chunk_size: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
             progress: bool = True, proposal: str = "encoder", refine_options: dict | None = None,
             **kwargs) -> EvalResult:
    """log p(x), ELBO, ESS and k-hat per example from the same K draws, ``batch_size``
    examples at a time (``chunk_size`` as in :func:`log_likelihood`); warns if k-hat > 0.7.

    ``proposal="encoder"`` draws from the guide; ``"refined"`` from :func:`refined_pair`'s
    ½q + ½q* (``refine_options`` go to its local fits), whose weights are tighter and lighter-
    tailed at the same K; ``elbo`` is then that proposal's."""
    if proposal not in PROPOSALS:
        raise ConfigError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    start, cpu = time.perf_counter(), time.process_time()
    if proposal == "refined":
        if args or kwargs:
            raise ConfigError("proposal='refined' takes vae.model, vae.guide and x only")
        x = prepare_examples(model, x)[0]
        model, guide, args = refined_pair(model, guide, x, progress=progress,
                                          **(refine_options or {}))
    result = _evaluate(model, guide, x, *args, num_samples=num_samples, chunk_size=chunk_size,
                       batch_size=batch_size, progress=progress, **kwargs)
    return dataclasses.replace(result, proposal=proposal, seconds=time.perf_counter() - start,
                               cpu_seconds=time.process_time() - cpu)


def _evaluate(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int,
              chunk_size: int | None, batch_size: int, progress: bool, **kwargs) -> EvalResult:
    from tqdm import tqdm

    batch_size = check_count("batch_size", batch_size)
    num_samples, batches = _batches(model, guide, x, args, kwargs, num_samples, chunk_size,
                                    batch_size)
    rows = []  # per batch: log p(x), ELBO, ESS and k-hat of its examples
    with torch.no_grad(), pyro.validation_enabled(False), \
            tqdm(total=x.shape[0], disable=not progress, desc=f"log p(x), K={num_samples}",
                 unit="ex") as bar:
        for lw in batches:
            lse = torch.logsumexp(lw, dim=0)
            ess = torch.exp(2 * lse - torch.logsumexp(2 * lw, dim=0))
            rows.append([t.cpu().numpy() for t in (lse - math.log(num_samples), lw.mean(0), ess)]
                        + [psis_khat(lw.T.cpu().numpy())])
            bar.update(lw.shape[1])
    result = EvalResult(*map(np.concatenate, zip(*rows)), num_samples=num_samples)
    if result.khat_frac_bad > 0:
        logger.warning(
            "PSIS k-hat > %.1f for %d of %d examples (max %.2f): the log p(x) estimate for "
            "those examples is unreliable, because the guide's tails are too light for the "
            "posterior and a few huge importance weights dominate; raise K or improve the "
            "guide", KHAT_BAD, int(round(result.khat_frac_bad * result.n)), result.n,
            result.khat_max)
    return result
