"""Diagnostics of log-weights: PSIS k-hat (Vehtari et al., via arviz) and a standard error."""
import logging
import math
import warnings

import numpy as np

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
