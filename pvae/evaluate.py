"""Importance-sampled log p(x) per example, the test ELBO, and PSIS k-hat.

For each example x and K draws z_k ~ q(z|x) from the guide, the log-weights are

    log w_k = log p(x, z_k) − log q(z_k|x),

and the estimates are

    log p(x) ≈ logsumexp_k(log w_k) − log K         (the IWAE bound, Burda et al.)
    ELBO(x) ≈ (1/K) Σ_k log w_k                     (unbiased for the ELBO)

The first is a lower bound in expectation that rises monotonically with K toward
log p(x). ``khat`` is the Pareto shape fitted to the tail of the K weights (PSIS,
Vehtari et al.): above 0.7 the estimate for that example cannot be trusted.

This works for any Pyro ``model(x, *args, **kwargs)`` / ``guide(x, *args, **kwargs)``
pair whose latent and observed sites all live in a vectorized ``pyro.plate("data")``
sized by the leading dimension of ``x``. The K particles are vectorized with an outer
``pyro.plate("_particles")`` left of the model's plates. Each site contributes its raw
``fn.log_prob(value)``: plate subsample scaling, ``poutine.scale`` (β) and
``poutine.mask`` are ignored, so what is evaluated is the unscaled model.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import prune_subsample_sites

from .errors import ConfigError, DataError, PvaeError

logger = logging.getLogger(__name__)

DATA_PLATE = "data"
PARTICLE_PLATE = "_particles"
DEFAULT_CHUNK_SIZE = 2**15
"""Latent draws (particles × examples) per forward pass: about 0.4 GB for the MNIST VAE."""
DEFAULT_BATCH_SIZE = 100
"""Examples whose K log-weights :func:`evaluate` keeps at once (K × 100 float64 numbers)."""
KHAT_BAD = 0.7


@dataclass(frozen=True)
class _Structure:
    """What a trial run of the model and guide learnt: the particle plate's dim."""

    particle_dim: int


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


def _check_inputs(x, num_samples, chunk_size) -> tuple[int, int]:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"x must be a torch.Tensor with the examples along dim 0, "
                        f"got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise DataError(f"x must have the examples along its leading dim and at least one "
                        f"example, got shape {tuple(x.shape)}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 1:
        raise ConfigError(f"num_samples (K) must be an integer >= 1, got {num_samples!r}")
    chunk = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ConfigError(f"chunk_size must be an integer >= 1 (latent draws per pass) or "
                          f"None, got {chunk_size!r}")
    return int(num_samples), int(chunk)


def _slice_args(args: tuple, kwargs: dict, n: int, sl: slice) -> tuple[tuple, dict]:
    """Slice every tensor whose leading dim is n (the number of examples) with ``sl``."""

    def cut(a):
        return a[sl] if isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == n else a

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _data_frame(site: dict):
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame
    return None


def _inspect(model: Callable, guide: Callable, x: torch.Tensor, args: tuple,
             kwargs: dict) -> _Structure:
    """Run model and guide once on the first examples; check the pair can be evaluated."""
    owner = getattr(model, "__self__", None)
    if owner is not None and callable(getattr(owner, "check_data", None)):
        owner.check_data(x)
    n_try = min(2, x.shape[0])
    t_args, t_kwargs = _slice_args(args, kwargs, x.shape[0], slice(0, n_try))
    try:
        with poutine.block(), torch.no_grad():
            guide_tr = poutine.trace(guide).get_trace(x[:n_try], *t_args, **t_kwargs)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(
                x[:n_try], *t_args, **t_kwargs)
    except PvaeError:
        raise
    except Exception as err:
        raise DataError(f"running the model and guide on x[:{n_try}] (x has shape "
                        f"{tuple(x.shape)}) failed: {err}. x must hold the examples along "
                        "its leading dim, as the model and guide expect") from err
    guide_tr, model_tr = prune_subsample_sites(guide_tr), prune_subsample_sites(model_tr)
    model_sites = {n: s for n, s in model_tr.nodes.items() if s["type"] == "sample"}
    guide_sites = {n: s for n, s in guide_tr.nodes.items() if s["type"] == "sample"}
    latent = [n for n, s in model_sites.items() if not s["is_observed"]]
    observed = [n for n, s in model_sites.items() if s["is_observed"]]
    missing = [n for n in latent if n not in guide_sites]
    extra = [n for n in guide_sites if n not in model_sites]
    if missing or extra:
        problems = ([f"the model's latent site(s) {missing} are not sampled by the guide"]
                    if missing else []) + \
                   ([f"the guide's site(s) {extra} are not in the model"] if extra else [])
        raise ConfigError(f"the guide must sample exactly the model's latent sites: "
                          f"{'; '.join(problems)} (model latents {latent}, guide sites "
                          f"{list(guide_sites)}); give both the same site names")
    if not latent:
        raise ConfigError("the model has no latent site in the 'data' plate, so there is "
                          "nothing to integrate out; sample at least one latent per example")
    if not observed:
        raise ConfigError("the model observes nothing (no site with obs=...); log p(x) needs "
                          "x observed inside pyro.plate('data')")
    dims = []
    for trace in (model_tr, guide_tr):
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["infer"].get("enumerate"):
                raise ConfigError(f"site {name!r} is enumerated; enumeration is not supported "
                                  "by the importance-sampling estimator")
            frame = _data_frame(site)
            if frame is None or not frame.vectorized:
                raise ConfigError(
                    f"site {name!r} is outside a vectorized pyro.plate('data'), so it is "
                    "shared by all examples and a per-example log p(x) cannot be estimated; "
                    "put every latent and observed site inside `with pyro.plate('data', ...)`")
            dims += [f.dim for f in site["cond_indep_stack"] if f.vectorized]
            size = site["fn"].batch_shape[frame.dim] if len(site["fn"].batch_shape) >= -frame.dim \
                else 1
            if size != n_try:
                raise DataError(f"site {name!r} has {size} entries along the 'data' plate for "
                                f"{n_try} examples of x (shape {tuple(x.shape)}); the 'data' "
                                "plate must be sized by the leading dim of x")
    return _Structure(particle_dim=min(dims) - 1)


def _site_log_prob(site: dict, particle_dim: int, data_dim: int) -> torch.Tensor:
    """fn.log_prob(value) summed over all dims but (particle, data): shape (k, b), float64."""
    lp = site["fn"].log_prob(site["value"])
    nd = lp.dim()
    keep = (nd + particle_dim, nd + data_dim)
    other = [d for d in range(nd) if d not in keep]
    if other:
        lp = lp.sum(other)
    return lp.double()


def _log_weights(model, guide, x, k, structure, args, kwargs) -> torch.Tensor:
    """One pass: the (k, b) log-weights log p(x, z) − log q(z|x) for k draws per example."""
    pdim = structure.particle_dim

    def particles(fn):
        def run(*a, **kw):
            with pyro.plate(PARTICLE_PLATE, k, dim=pdim):
                return fn(*a, **kw)
        return run

    guide_tr = poutine.trace(particles(guide)).get_trace(x, *args, **kwargs)
    model_tr = poutine.trace(poutine.replay(particles(model), trace=guide_tr)).get_trace(
        x, *args, **kwargs)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for trace, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
                continue
            lp = _site_log_prob(site, pdim, _data_frame(site).dim)
            total = total + lp if sign > 0 else total - lp
    return total.expand(k, x.shape[0])


def _blocks(model, guide, x, num_samples, chunk, structure, args, kwargs,
            start: int, stop: int) -> Iterator[tuple[int, int, int, torch.Tensor]]:
    """Yield (example offset, particle offset, k, log-weights (k, b)) covering x[start:stop].

    A pass holds at most ``chunk`` latent draws: all K draws of ``chunk // K`` examples,
    or ``chunk`` draws of one example when K > chunk.
    """
    n = x.shape[0]
    per_pass = max(1, chunk // num_samples)
    k_pass = min(num_samples, chunk)
    for b0 in range(start, stop, per_pass):
        sl = slice(b0, min(b0 + per_pass, stop))
        xb = x[sl]
        a, kw = _slice_args(args, kwargs, n, sl)
        for k0 in range(0, num_samples, k_pass):
            k = min(k_pass, num_samples - k0)
            yield b0 - start, k0, k, _log_weights(model, guide, xb, k, structure, a, kw)


def log_likelihood(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int,
                   chunk_size: int | None = None, *args, **kwargs) -> torch.Tensor:
    """Importance-sampled log p(x) per example: logsumexp_k log w_k − log K, shape (B,).

    ``model`` and ``guide`` are called as ``fn(x_chunk, *args, **kwargs)``; every tensor in
    ``args``/``kwargs`` whose leading dim equals B = ``len(x)`` (e.g. dataset indices
    ``idx``) is sliced along with x. ``chunk_size`` bounds the latent draws
    (particles × examples) held in one pass (default :data:`DEFAULT_CHUNK_SIZE`), so memory
    does not grow with K × B. The running logsumexp is accumulated in float64; the result
    is float64 on x's device. Gradients are not tracked.
    """
    num_samples, chunk = _check_inputs(x, num_samples, chunk_size)
    structure = _inspect(model, guide, x, args, kwargs)
    acc = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    with torch.no_grad(), pyro.validation_enabled(False):
        for b0, _, _, lw in _blocks(model, guide, x, num_samples, chunk, structure, args,
                                    kwargs, 0, x.shape[0]):
            sl = slice(b0, b0 + lw.shape[1])
            acc[sl] = torch.logaddexp(acc[sl], torch.logsumexp(lw, dim=0))
    return acc - math.log(num_samples)


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


def evaluate(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int,
             chunk_size: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
             progress: bool = True, *args, **kwargs) -> EvalResult:
    """log p(x), ELBO, ESS and PSIS k-hat per example from the same K draws each.

    Works batch by batch of ``batch_size`` examples, keeping that batch's K log-weights
    (K × batch_size float64) for the k-hat fit; each batch is computed in passes of at most
    ``chunk_size`` latent draws as in :func:`log_likelihood`. Logs a warning when some
    k-hat exceeds 0.7.
    """
    from tqdm import tqdm

    num_samples, chunk = _check_inputs(x, num_samples, chunk_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    structure = _inspect(model, guide, x, args, kwargs)
    n = x.shape[0]
    parts: dict[str, list[np.ndarray]] = {"log_px": [], "elbo": [], "ess": [], "khat": []}
    with torch.no_grad(), pyro.validation_enabled(False), \
            tqdm(total=n, disable=not progress, desc=f"log p(x), K={num_samples}",
                 unit="ex") as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            lw = torch.empty((num_samples, stop - start), dtype=torch.float64, device=x.device)
            for b0, k0, k, block in _blocks(model, guide, x, num_samples, chunk, structure,
                                            args, kwargs, start, stop):
                lw[k0:k0 + k, b0:b0 + block.shape[1]] = block
            lse = torch.logsumexp(lw, dim=0)
            parts["log_px"].append((lse - math.log(num_samples)).cpu().numpy())
            parts["elbo"].append(lw.mean(dim=0).cpu().numpy())
            parts["ess"].append(torch.exp(2 * lse - torch.logsumexp(2 * lw, dim=0)).cpu().numpy())
            parts["khat"].append(psis_khat(lw.T.cpu().numpy()))
            bar.update(stop - start)
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
