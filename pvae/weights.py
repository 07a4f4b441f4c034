"""Importance log-weights per example and draw: the one quantity the estimators share.

For a model p(x, z) and a guide q(z|x), each example x_b and K draws z_bk ~ q(z|x_b),

    log w_bk = log p(x_b, z_bk) − log q(z_bk|x_b),

a ``(K, B)`` matrix. logsumexp_k log w_bk − log K is the importance-sampled log p(x_b)
(:mod:`pvae.evaluate`), mean_k log w_bk the ELBO (:mod:`pvae.amortization`), and
−(N/B)·Σ_b (logsumexp_k log w_bk − log K) the IWAE loss (:class:`pvae.objectives.IWAE`).

The pair contract: ``model(x, *args, **kwargs)`` and ``guide(x, *args, **kwargs)`` are Pyro
programs whose every latent and observed site lies in a vectorized ``pyro.plate("data")``
sized by the leading dim of ``x``; the guide samples exactly the model's latent sites.
Every tensor in ``args``/``kwargs`` whose leading dim is ``len(x)`` (dataset indices
``idx``, say) is cut along with ``x`` when the examples are split.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from .errors import ConfigError, DataError, PvaeError

DATA_PLATE = "data"
PARTICLE_PLATE = "_particles"
_SHAPE_ERROR = re.compile(r"shape|size|dimension|broadcast", re.IGNORECASE)


@dataclass(frozen=True)
class Structure:
    """A checked (model, guide) pair: the dim of the particle plate, left of the pair's plates.

    Made by :func:`check_pair`; a caller that fixes the plate nesting itself (the IWAE loss,
    one plate at dim −1) may state it directly, ``Structure(particle_dim=-2)``.
    """

    particle_dim: int


def slice_examples(x: torch.Tensor, sl: slice, *args, **kwargs
                   ) -> tuple[torch.Tensor, tuple, dict]:
    """``x[sl]``, and every tensor in ``args``/``kwargs`` with leading dim len(x) cut by ``sl``."""
    n = x.shape[0]

    def cut(a):
        return a[sl] if isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == n else a

    return x[sl], tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def to_model_device(model: Callable, x: torch.Tensor, *args, **kwargs
                    ) -> tuple[torch.Tensor, tuple, dict]:
    """``x`` and the tensors cut with it (:func:`slice_examples`) on the model's device.

    The model's device is that of the first parameter or buffer of the ``nn.Module`` that
    ``model`` is a bound method of (``vae.model``); for any other model nothing moves.
    """
    owner = getattr(model, "__self__", None)
    if not isinstance(owner, torch.nn.Module) or not isinstance(x, torch.Tensor):
        return x, args, kwargs
    device = next((t.device for t in (*owner.parameters(), *owner.buffers())), None)
    if device is None or x.device == device:
        return x, args, kwargs
    n = x.shape[0] if x.dim() else None

    def move(a):
        return a.to(device) if isinstance(a, torch.Tensor) and a.dim() >= 1 \
            and a.shape[0] == n else a

    return x.to(device), tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}


def _data_frame(name: str, site: dict):
    frame = next((f for f in site["cond_indep_stack"] if f.name == DATA_PLATE), None)
    if frame is None or not frame.vectorized:
        raise ConfigError(
            f"site {name!r} is outside a vectorized pyro.plate('data'), so it is shared by all "
            "examples and has no per-example weight; put every latent and observed site inside "
            "exactly one `with pyro.plate('data', ...)` over the examples")
    return frame


def _trial_traces(model, guide, x, args, kwargs):
    """Trace the guide and the model replayed on it for x[:2]; errors say what ran."""
    n_try = min(2, x.shape[0])
    xt, t_args, t_kwargs = slice_examples(x, slice(0, n_try), *args, **kwargs)
    try:
        with poutine.block(), torch.no_grad():
            guide_tr = poutine.trace(guide).get_trace(xt, *t_args, **t_kwargs)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(
                xt, *t_args, **t_kwargs)
    except Exception as err:
        own = _users_own(err)
        if isinstance(own, PvaeError):
            raise own from None
        if isinstance(own, (ValueError, RuntimeError, IndexError)) \
                and _SHAPE_ERROR.search(str(own)):
            raise DataError(f"running the model and guide on x[:{n_try}] (x has shape "
                            f"{tuple(x.shape)}) failed with a shape error: {own}. x must hold "
                            "the examples along its leading dim, as the model and guide "
                            "expect") from err
        if hasattr(own, "add_note"):
            own.add_note(f"raised by the model or guide while pvae ran them on x[:{n_try}] "
                         f"(x has shape {tuple(x.shape)}) to check the pair before importance "
                         "sampling")
        raise own from None
    return n_try, prune_subsample_sites(guide_tr), prune_subsample_sites(model_tr)


def _users_own(err: BaseException) -> BaseException:
    """The exception the model or guide raised, unwrapped from Pyro's re-raise of it
    (``poutine.trace`` re-raises a ValueError/RuntimeError with the trace shapes appended)."""
    while type(err.__cause__) is type(err) and str(err).startswith(str(err.__cause__)):
        err = err.__cause__
    return err


def check_pair(model: Callable, guide: Callable, x: torch.Tensor, *args, **kwargs) -> Structure:
    """Check the pair contract once by running the guide and the replayed model on x[:2].

    Checks: x is a tensor with examples along dim 0 (and ``check_data(x)`` of the module
    ``model`` is a method of, if it has one); the guide samples exactly the model's latent
    sites; there is a latent and an observed site; no site is enumerated; every site lies
    in a vectorized ``"data"`` plate with one entry per example. The model's or guide's own
    exceptions propagate as themselves (with a note saying what pvae was running), except a
    ValueError/RuntimeError/IndexError about shapes, which is a DataError about x's leading
    dim. Returns the particle plate's dim: one left of the leftmost plate the pair uses.
    """
    if not isinstance(x, torch.Tensor):
        raise DataError(f"x must be a torch.Tensor with the examples along dim 0, "
                        f"got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise DataError(f"x must have the examples along its leading dim and at least one "
                        f"example, got shape {tuple(x.shape)}")
    owner = getattr(model, "__self__", None)
    if owner is not None and callable(getattr(owner, "check_data", None)):
        owner.check_data(x)
    n_try, guide_tr, model_tr = _trial_traces(model, guide, x, args, kwargs)
    model_sites = {n: s for n, s in model_tr.nodes.items() if s["type"] == "sample"}
    guide_sites = {n: s for n, s in guide_tr.nodes.items() if s["type"] == "sample"}
    latent = [n for n, s in model_sites.items() if not s["is_observed"]]
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
    if len(latent) == len(model_sites):
        raise ConfigError("the model observes nothing (no site with obs=...); log p(x) needs "
                          "x observed inside pyro.plate('data')")
    dims = []
    for name, site in (*model_sites.items(), *guide_sites.items()):
        if site["infer"].get("enumerate"):
            raise ConfigError(f"site {name!r} is enumerated; enumeration is not supported "
                              "by the importance-sampling estimator")
        frame = _data_frame(name, site)
        dims += [f.dim for f in site["cond_indep_stack"] if f.vectorized]
        shape = site["fn"].batch_shape
        size = shape[frame.dim] if len(shape) >= -frame.dim else 1
        if size != n_try:
            raise DataError(f"site {name!r} has {size} entries along the 'data' plate for "
                            f"{n_try} examples of x (shape {tuple(x.shape)}); the 'data' "
                            "plate must be sized by the leading dim of x")
    return Structure(particle_dim=min(dims) - 1)


def _site_log_prob(name: str, site: dict, particle_dim: int, scaled: bool) -> torch.Tensor:
    """The site's log-density summed over all dims but (particle, data): shape (k, b)."""
    frame = _data_frame(name, site)
    lp = site["fn"].log_prob(site["value"])
    if scaled:
        subsample = (frame.full_size or frame.size) / frame.size
        lp = scale_and_mask(lp, site["scale"] / subsample, site["mask"])
    else:
        lp = lp.double()
    nd = lp.dim()
    other = [d for d in range(nd) if d not in (nd + particle_dim, nd + frame.dim)]
    return lp.sum(other) if other else lp


def _one_pass(model, guide, x, k, particle_dim, scaled, args, kwargs) -> torch.Tensor:
    """The (k, len(x)) log-weights from one vectorized trace of k draws per example."""

    def particles(fn):
        def run(*a, **kw):
            with pyro.plate(PARTICLE_PLATE, k, dim=particle_dim):
                return fn(*a, **kw)
        return run

    guide_tr = poutine.trace(particles(guide)).get_trace(x, *args, **kwargs)
    model_tr = poutine.trace(poutine.replay(particles(model), trace=guide_tr)).get_trace(
        x, *args, **kwargs)
    total = None
    for trace, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            lp = sign * _site_log_prob(name, site, particle_dim, scaled)
            total = lp if total is None else total + lp
    if total is None:
        raise ConfigError("the model and guide have no sample sites")
    return total.expand(k, x.shape[0])


def check_count(name: str, value, allow_none: bool = False) -> int | None:
    """``value`` as an int; ConfigError unless it is an integer >= 1 (or None, if allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1{' or None' if allow_none else ''}, "
                          f"got {value!r}")
    return int(value)


def log_weights(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int, *args,
                chunk_size: int | None = None, scaled: bool = False,
                structure: Structure | None = None, **kwargs) -> torch.Tensor:
    """log w_bk = log p(x_b, z_bk) − log q(z_bk|x_b), z_bk ~ q(z|x_b): shape (num_samples, B).

    The K = ``num_samples`` draws per example are vectorized with an outer plate at
    ``structure.particle_dim``; the guide is traced and the model replayed on its draws.
    Each site's log-density is summed over every dim but the particle and ``"data"`` dims.

    ``scaled=False``: each site's raw ``fn.log_prob(value)``, ignoring ``poutine.scale``
    (β), ``poutine.mask`` and the plate's subsample scale N/B, accumulated in float64: the
    weights of the β = 1 model, whose logsumexp bounds log p(x). ``scaled=True``: each
    site's ``scale_and_mask(fn.log_prob(value), scale / (N/B), mask)`` in its own dtype, so
    with the latent site scaled by β, log w = log p(x|z) + β·(log p(z) − log q(z|x)), and
    N/B is left for the caller to apply outside the logsumexp (the IWAE loss).

    Differentiable: gradients reach the model's and guide's parameters (reparameterized
    draws) and anything the guide closes over. One pass holds at most ``chunk_size`` draws
    (particles × examples; None: all in one pass); passes are joined with ``torch.cat``.
    ``structure`` is :func:`check_pair`'s result, made once by the caller; without it the
    pair is checked here (a trial run on x[:2]).
    """
    num_samples = check_count("num_samples (K)", num_samples)
    chunk = check_count("chunk_size (latent draws per pass)", chunk_size, allow_none=True)
    structure = structure or check_pair(model, guide, x, *args, **kwargs)
    n, pdim = x.shape[0], structure.particle_dim
    chunk = chunk or num_samples * n
    per_pass, k_pass = max(1, chunk // num_samples), min(num_samples, chunk)
    if per_pass >= n and k_pass == num_samples:
        return _one_pass(model, guide, x, num_samples, pdim, scaled, args, kwargs)
    columns = []
    for b0 in range(0, n, per_pass):
        xb, a, kw = slice_examples(x, slice(b0, b0 + per_pass), *args, **kwargs)
        columns.append(torch.cat([
            _one_pass(model, guide, xb, min(k_pass, num_samples - k0), pdim, scaled, a, kw)
            for k0 in range(0, num_samples, k_pass)], dim=0))
    return torch.cat(columns, dim=1)
