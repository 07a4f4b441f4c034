"""Importance-sampled log p(x) per example, the test ELBO, and PSIS k-hat.

From the K log-weights log w_k of each example (:mod:`pvae.weights`, unscaled: the β = 1
model), log p(x) ≈ logsumexp_k log w_k − log K, a lower bound in expectation rising with K
toward log p(x) (Burda et al.), and ELBO(x) ≈ mean_k log w_k. PSIS k-hat (Vehtari et al.)
above 0.7 says the estimate for that example cannot be trusted. ``x`` and the tensors cut
with it move to the model's device (:func:`pvae.weights.prepare_examples`)."""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyro
import torch

from .weights import DEFAULT_CHUNK_SIZE, check_count, check_pair, log_weights, map_examples, prepare_examples

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100
"""Examples whose K log-weights :func:`evaluate` keeps at once (K × 100 float64 numbers)."""
KHAT_BAD = 0.7
_METRICS = ("test_elbo", "test_elbo_stderr", "test_log_px", "test_log_px_stderr",
            "eval_samples", "n_test", "psis_khat_max", "psis_khat_frac_bad")


@dataclass(frozen=True)
class EvalResult:
    """Per-example results, float64 arrays of length n: ``log_px`` and ``elbo`` as above,
    ``ess`` = (Σ_k w_k)² / Σ_k w_k² in [1, K], ``khat`` (:func:`psis_khat`)."""

    log_px: np.ndarray
    elbo: np.ndarray
    ess: np.ndarray
    khat: np.ndarray
    num_samples: int

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
        return _stderr(self.log_px)

    @property
    def elbo_mean(self) -> float:
        """Mean ELBO estimate over the examples."""
        return float(self.elbo.mean())

    @property
    def elbo_stderr(self) -> float:
        """Standard error of :attr:`elbo_mean`."""
        return _stderr(self.elbo)

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
                  int(self.num_samples), self.n, self.khat_max, self.khat_frac_bad)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in zip(_METRICS, values)}


def _stderr(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _batches(model, guide, x, args, kwargs, num_samples, chunk_size, batch_size=None):
    """Check the call once; return K and the (K, b) log-weights of each run of ``batch_size``
    examples (None: as many as one pass of ``chunk_size`` draws holds), computed lazily."""
    num_samples = check_count("num_samples (K)", num_samples)
    chunk = check_count("chunk_size (latent draws per pass)", chunk_size, allow_none=True)
    chunk = chunk or DEFAULT_CHUNK_SIZE
    x, args, kwargs = prepare_examples(model, x, *args, **kwargs)
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
    most ``chunk_size`` latent draws (particles × examples; default :data:`DEFAULT_CHUNK_SIZE`)."""
    num_samples, batches = _batches(model, guide, x, args, kwargs, num_samples, chunk_size)
    with torch.no_grad(), pyro.validation_enabled(False):
        lse = torch.cat([torch.logsumexp(lw, dim=0) for lw in batches])
    return (lse - math.log(num_samples)).to(x.device)


def psis_khat(log_weights: np.ndarray) -> np.ndarray:
    """PSIS Pareto shape k-hat for each row of a (n, K) array of log-weights (arviz); NaN
    where no tail can be fitted (the tail of min(K/5, 3√K) draws needs K > 20; equal weights)."""
    preview = logging.getLogger("arviz.preview")  # silence arviz's import-time messages
    level = preview.level
    preview.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    finally:
        preview.setLevel(level)
    log_weights = np.array(log_weights, dtype=np.float64)
    k = log_weights.shape[-1]
    if math.ceil(min(k / 5.0, 3 * math.sqrt(k))) <= 4:
        return np.full(log_weights.shape[:-1], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        _, khat = arviz.psislw(log_weights, normalize=False)
    khat = np.atleast_1d(np.asarray(khat, dtype=np.float64))
    return np.where(np.isfinite(khat), khat, np.nan)


def evaluate(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int,
             chunk_size: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
             progress: bool = True, **kwargs) -> EvalResult:
    """log p(x), ELBO, ESS and k-hat per example from the same K draws, ``batch_size``
    examples at a time (``chunk_size`` as in :func:`log_likelihood`); warns if k-hat > 0.7."""
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
