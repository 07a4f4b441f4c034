"""Importance-sampled log p(x) per example, the test ELBO, and PSIS k-hat.

For each example x and K draws z_k ~ q(z|x) from the guide, the log-weights are

    log w_k = log p(x, z_k) − log q(z_k|x),

and the estimates are

    log p(x) ≈ logsumexp_k(log w_k) − log K         (the IWAE bound, Burda et al.)
    ELBO(x) ≈ (1/K) Σ_k log w_k                     (unbiased for the ELBO)

The first is a lower bound in expectation that rises monotonically with K toward
log p(x). ``khat`` is the Pareto shape fitted to the tail of the K weights (PSIS,
Vehtari et al.): above 0.7 the estimate for that example cannot be trusted.

The log-weights are :func:`pvae.weights.log_weights` (``scaled=False``): any Pyro
``model(x, *args, **kwargs)`` / ``guide(x, *args, **kwargs)`` pair whose latent and observed
sites all live in a vectorized ``pyro.plate("data")`` sized by the leading dimension of
``x``; each site contributes its raw ``fn.log_prob(value)`` (plate subsample scaling,
``poutine.scale`` (β) and ``poutine.mask`` are ignored), so what is evaluated is the
unscaled model. When ``model`` is a method of an ``nn.Module`` with parameters or buffers
(``vae.model``), ``x`` and the tensors cut with it move to that module's device.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyro
import torch

from .weights import check_count, check_pair, log_weights, slice_examples, to_model_device

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 2**15
"""Latent draws (particles × examples) per forward pass: about 0.4 GB for the MNIST VAE."""
DEFAULT_BATCH_SIZE = 100
"""Examples whose K log-weights :func:`evaluate` keeps at once (K × 100 float64 numbers)."""
KHAT_BAD = 0.7


@dataclass(frozen=True)
class EvalResult:
    """Per-example importance-sampling results, each a float64 numpy array of length n.

    ``log_px``: logsumexp_k log w_k − log K. ``elbo``: mean_k log w_k (same draws).
    ``ess``: (Σ_k w_k)² / Σ_k w_k², between 1 and K. ``khat``: PSIS Pareto shape of the
    weights (NaN when no tail can be fitted: K ≤ 20, or equal weights).
    """

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
        return dict.fromkeys(("test_elbo", "test_elbo_stderr", "test_log_px",
                              "test_log_px_stderr", "eval_samples", "n_test", "psis_khat_max",
                              "psis_khat_frac_bad"))

    def to_metrics(self) -> dict:
        """The ``metrics.json`` entries this result fills (NaN becomes ``None``)."""
        values = {
            "test_elbo": self.elbo_mean,
            "test_elbo_stderr": self.elbo_stderr,
            "test_log_px": self.log_px_mean,
            "test_log_px_stderr": self.log_px_stderr,
            "eval_samples": int(self.num_samples),
            "n_test": self.n,
            "psis_khat_max": self.khat_max,
            "psis_khat_frac_bad": self.khat_frac_bad,
        }
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in values.items()}


def _stderr(values: np.ndarray) -> float:
    if values.shape[0] < 2:
        return 0.0
    return float(values.std(ddof=1) / math.sqrt(values.shape[0]))


def _prepared(model, guide, x, args, kwargs, num_samples, chunk_size):
    """(x, args, kwargs) on the model's device, K, the chunk, and the pair's checked structure."""
    num_samples = check_count("num_samples (K)", num_samples)
    chunk = check_count("chunk_size (latent draws per pass)", chunk_size, allow_none=True)
    x, args, kwargs = to_model_device(model, x, *args, **kwargs)
    structure = check_pair(model, guide, x, *args, **kwargs)
    return x, args, kwargs, num_samples, chunk or DEFAULT_CHUNK_SIZE, structure


def log_likelihood(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int,
                   chunk_size: int | None = None, **kwargs) -> torch.Tensor:
    """Importance-sampled log p(x) per example: logsumexp_k log w_k − log K, shape (B,).

    ``model`` and ``guide`` are called as ``fn(x_chunk, *args, **kwargs)``; every tensor in
    ``args``/``kwargs`` whose leading dim equals B = ``len(x)`` (e.g. dataset indices
    ``idx``) is sliced along with x. ``chunk_size`` bounds the latent draws
    (particles × examples) held in one pass (default :data:`DEFAULT_CHUNK_SIZE`), so memory
    does not grow with K × B. Computed on the model's device in float64, returned on x's
    device. Gradients are not tracked.
    """
    device = x.device if isinstance(x, torch.Tensor) else None
    x, args, kwargs, num_samples, chunk, structure = _prepared(
        model, guide, x, args, kwargs, num_samples, chunk_size)
    per_pass = max(1, chunk // num_samples)
    parts = []
    with torch.no_grad(), pyro.validation_enabled(False):
        for b0 in range(0, x.shape[0], per_pass):
            xb, a, kw = slice_examples(x, slice(b0, b0 + per_pass), *args, **kwargs)
            lw = log_weights(model, guide, xb, num_samples, *a, chunk_size=chunk,
                             structure=structure, **kw)
            parts.append(torch.logsumexp(lw, dim=0))
    return (torch.cat(parts) - math.log(num_samples)).to(device)


def _import_arviz():
    """Import arviz without its import-time FutureWarning and INFO log lines."""
    preview = logging.getLogger("arviz.preview")
    level = preview.level
    preview.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    finally:
        preview.setLevel(level)
    return arviz


def psis_khat(log_weights: np.ndarray) -> np.ndarray:
    """PSIS Pareto shape k-hat for each row of a (n, K) array of log-weights (arviz).

    NaN where no tail can be fitted: the tail holds min(K/5, 3√K) draws and needs more than
    4 (K > 20), and equal weights have no tail at all.
    """
    arviz = _import_arviz()

    log_weights = np.array(log_weights, dtype=np.float64)
    k = log_weights.shape[-1]
    if math.ceil(min(k / 5.0, 3 * math.sqrt(k))) <= 4:
        return np.full(log_weights.shape[:-1], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        _, khat = arviz.psislw(log_weights, normalize=False)
    khat = np.atleast_1d(np.asarray(khat, dtype=np.float64)).copy()
    khat[~np.isfinite(khat)] = np.nan
    return khat


def evaluate(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int,
             chunk_size: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
             progress: bool = True, **kwargs) -> EvalResult:
    """log p(x), ELBO, ESS and PSIS k-hat per example from the same K draws each.

    Works batch by batch of ``batch_size`` examples, keeping that batch's K log-weights
    (K × batch_size float64) for the k-hat fit; each batch is computed in passes of at most
    ``chunk_size`` latent draws as in :func:`log_likelihood`, whose ``args``/``kwargs`` and
    device rules apply. Logs a warning when some k-hat exceeds 0.7.
    """
    from tqdm import tqdm

    batch_size = check_count("batch_size", batch_size)
    x, args, kwargs, num_samples, chunk, structure = _prepared(
        model, guide, x, args, kwargs, num_samples, chunk_size)
    n = x.shape[0]
    parts: dict[str, list[np.ndarray]] = {"log_px": [], "elbo": [], "ess": [], "khat": []}
    with torch.no_grad(), pyro.validation_enabled(False), \
            tqdm(total=n, disable=not progress, desc=f"log p(x), K={num_samples}",
                 unit="ex") as bar:
        for start in range(0, n, batch_size):
            xb, a, kw = slice_examples(x, slice(start, start + batch_size), *args, **kwargs)
            lw = log_weights(model, guide, xb, num_samples, *a, chunk_size=chunk,
                             structure=structure, **kw)
            lse = torch.logsumexp(lw, dim=0)
            parts["log_px"].append((lse - math.log(num_samples)).cpu().numpy())
            parts["elbo"].append(lw.mean(dim=0).cpu().numpy())
            parts["ess"].append(torch.exp(2 * lse - torch.logsumexp(2 * lw, dim=0)).cpu().numpy())
            parts["khat"].append(psis_khat(lw.T.cpu().numpy()))
            bar.update(xb.shape[0])
    result = EvalResult(**{k: np.concatenate(v) for k, v in parts.items()},
                        num_samples=num_samples)
    if result.khat_frac_bad > 0:
        logger.warning(
            "PSIS k-hat > %.1f for %d of %d examples (max %.2f): the log p(x) estimate for "
            "those examples is unreliable, because the guide's tails are too light for the "
            "posterior and a few huge importance weights dominate; raise K or improve the "
            "guide", KHAT_BAD, int(round(result.khat_frac_bad * result.n)), result.n,
            result.khat_max)
    return result
