"""The one base of every estimator's result, :class:`Estimate`, its ``metrics.json`` entries,
and the diagnostics of log-weights: PSIS k-hat (Vehtari et al., via arviz), a standard error."""
import logging
import math
import warnings
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar

import numpy as np
import torch

KHAT_BAD = 0.7


def stderr(values) -> float:
    """Standard error of the mean of a 1-d array: std (ddof 1) / sqrt(n); 0 for one value."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


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


def per_example(values: Any) -> np.ndarray:
    """A per-example array (tensor or NumPy) as a float64 NumPy array on the CPU."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """Per-example estimates and their cost in wall ``seconds`` and ``cpu_seconds``: :attr:`MAIN`
    names the attribute :attr:`n`, :meth:`mean` and :meth:`stderr` default to, :attr:`METRICS`
    the ``metrics.json`` entries ``(key, attribute path, with_stderr)``; with importance weights, a
    per-example ``khat`` (NaN where no tail could be fitted)."""

    seconds: float = math.nan
    cpu_seconds: float = math.nan
    MAIN: ClassVar[str] = "log_px"
    METRICS: ClassVar[tuple[tuple[str, str, bool], ...]] = ()

    def values(self, name: str | None = None) -> np.ndarray:
        """The per-example values of attribute ``name`` (default :attr:`MAIN`), float64."""
        return per_example(attrgetter(name or self.MAIN)(self))

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.values().shape[0])

    def mean(self, name: str | None = None) -> float:
        """Mean over the examples of attribute ``name`` (default :attr:`MAIN`)."""
        return float(self.values(name).mean())

    def stderr(self, name: str | None = None) -> float:
        """Standard error of :meth:`mean`: std (ddof 1) / √n; NaN (unknown) for one example."""
        v = self.values(name)
        return stderr(v) if v.shape[0] > 1 else math.nan

    @property
    def khat_max(self) -> float:
        """Largest PSIS k-hat over the examples (NaN when none could be fitted)."""
        k = np.asarray(getattr(self, "khat", math.nan), dtype=np.float64)
        return float(np.nanmax(k)) if np.isfinite(k).any() else math.nan

    @property
    def khat_frac_bad(self) -> float:
        """Fraction of examples with k-hat > 0.7 (unreliable); NaN when none was fitted."""
        k = np.asarray(getattr(self, "khat", math.nan), dtype=np.float64)
        return float(np.mean(k > KHAT_BAD)) if np.isfinite(k).any() else math.nan

    @property
    def log_px_mean(self) -> float:
        """Mean log p(x) estimate over the examples (nats per example)."""
        return self.mean("log_px")

    @property
    def log_px_stderr(self) -> float:
        """Standard error of :attr:`log_px_mean`."""
        return self.stderr("log_px")

    def to_metrics(self) -> dict[str, Any]:
        """The entries of :attr:`METRICS`: a per-example attribute as its mean (and, with
        ``with_stderr``, ``key_stderr``), anything else as it is; NaN (unknown) becomes None."""
        out: dict[str, Any] = {}
        for key, name, with_stderr in self.METRICS:
            value = attrgetter(name)(self)
            if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim >= 1:
                out[key] = _plain(self.mean(name))
                if with_stderr:
                    out[f"{key}_stderr"] = _plain(self.stderr(name))
            else:
                out[key] = _plain(value)
        return out

    def warning(self) -> str | None:
        """What a reader of the estimate must be told, in one line (None: nothing)."""
        return None
