"""Importance log-weights log w_bk = log p(x_b, z_bk) − log q(z_bk|x_b), z_bk ~ q(z|x_b), a
``(K, B)`` matrix for K draws of each of B examples, shared by the importance-sampled log p(x),
the ELBO and the IWAE loss, for a pair whose sites all lie in ``pyro.plate("data")`` over x's
leading dim (the contract: docs/evaluation.rst). Discrete sites marked for enumeration are summed
exactly: w_bk = Σ_y p(x_b, y, z_bky) / q(z_bky|x_b, y), K draws of z for each value y."""
import itertools
import re
from dataclasses import dataclass
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from ..errors import ConfigError, DataError, PvaeError
from .host import map_examples

DATA_PLATE = "data"
PARTICLE_PLATE = "_particles"
DEFAULT_CHUNK_SIZE = 2**13
CUDA_CHUNK_SIZE = 2**17


@dataclass(frozen=True)
class Structure:
    """A checked pair (:func:`check_pair`): the particle plate's dim, left of the pair's plates,
    and each enumerated site's name with its support (values along dim 0)."""

    particle_dim: int
    enumerated: tuple[tuple[str, torch.Tensor], ...] = ()


def default_chunk_size(device) -> int:
    """:data:`CUDA_CHUNK_SIZE` for a CUDA device, else :data:`DEFAULT_CHUNK_SIZE`."""
    return CUDA_CHUNK_SIZE if torch.device(device).type == "cuda" else DEFAULT_CHUNK_SIZE


def _data_frame(name: str, site: dict):
    frame = next((f for f in site["cond_indep_stack"] if f.name == DATA_PLATE), None)
    if frame is None or not frame.vectorized:
        raise ConfigError(
            f"site {name!r} is outside a vectorized pyro.plate('data'), so it is shared by all "
            "examples and has no per-example weight; put every latent and observed site inside "
            "exactly one `with pyro.plate('data', ...)` over the examples")
    return frame


def check_pair(model: Callable, guide: Callable, x: torch.Tensor, *args, **kwargs) -> Structure:
    """The :class:`Structure` of a pair that keeps the contract on x[:2], else a ConfigError or
    DataError (a shape error: about x's leading dim); the pair's own exceptions propagate."""
    n_try = min(2, x.shape[0])
    xt, t_args, t_kwargs = map_examples(lambda a: a[:n_try], x, *args, **kwargs)
    try:
        with poutine.block(), torch.no_grad():
            guide_tr = poutine.trace(guide).get_trace(xt, *t_args, **t_kwargs)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(
                xt, *t_args, **t_kwargs)
    except Exception as err:
        own = err  # unwrapped from poutine.trace's re-raise with the trace shapes appended
        while type(own.__cause__) is type(own) and str(own).startswith(str(own.__cause__)):
            own = own.__cause__
        if isinstance(own, PvaeError):
            raise own from None
        if isinstance(own, (ValueError, RuntimeError, IndexError)) \
                and re.search("shape|size|dimension|broadcast", str(own), re.IGNORECASE):
            raise DataError(f"running the model and guide on x[:{n_try}] (x has shape "
                            f"{tuple(x.shape)}) failed with a shape error: {own}. x must hold "
                            "the examples along its leading dim, as the model and guide "
                            "expect") from err
        if hasattr(own, "add_note"):
            own.add_note(f"raised by the model or guide while pvae ran them on x[:{n_try}] "
                         f"(x has shape {tuple(x.shape)}) to check the pair before importance "
                         "sampling")
        raise own from None
    model_sites, guide_sites = ({n: s for n, s in prune_subsample_sites(tr).nodes.items()
                                 if s["type"] == "sample"} for tr in (model_tr, guide_tr))
    latent = [n for n, s in model_sites.items() if not s["is_observed"]]
    enumerated = _enumerated({**model_sites, **guide_sites})
    missing = [n for n in latent if n not in guide_sites and n not in enumerated]
    extra = [n for n in guide_sites if n not in model_sites]
    if missing or extra:
        raise ConfigError(f"the guide must sample exactly the model's latent sites: the model's "
                          f"latent site(s) {missing} are not sampled by the guide; the guide's "
                          f"site(s) {extra} are not in the model (model latents {latent}, guide "
                          f"sites {list(guide_sites)}); give both the same site names")
    if not latent:
        raise ConfigError("the model has no latent site in the 'data' plate, so there is "
                          "nothing to integrate out; sample at least one latent per example")
    if len(latent) == len(model_sites):
        raise ConfigError("the model observes nothing (no site with obs=...); log p(x) needs "
                          "x observed inside pyro.plate('data')")
    dims = []
    for name, site in (*model_sites.items(), *guide_sites.items()):
        frame = _data_frame(name, site)
        dims += [f.dim for f in site["cond_indep_stack"] if f.vectorized]
        shape = site["fn"].batch_shape
        size = shape[frame.dim] if len(shape) >= -frame.dim else 1
        if size != n_try:
            raise DataError(f"site {name!r} has {size} entries along the 'data' plate for "
                            f"{n_try} examples of x (shape {tuple(x.shape)}); the 'data' "
                            "plate must be sized by the leading dim of x")
    return Structure(particle_dim=min(dims) - 1, enumerated=tuple(enumerated.items()))


def _enumerated(sites: dict) -> dict[str, torch.Tensor]:
    """{name: support} of the unobserved sites marked ``infer={"enumerate": ...}``."""
    out = {}
    for name, site in sites.items():
        if site["infer"].get("enumerate") and not site["is_observed"]:
            if not site["fn"].has_enumerate_support:
                raise ConfigError(f"site {name!r} is marked for enumeration but "
                                  f"{type(site['fn']).__name__} has no finite support to sum")
            out[name] = site["fn"].enumerate_support(expand=False).detach()
    return out


def summed_pairs(model: Callable, guide: Callable, structure: Structure) -> list[tuple]:
    """One (model, guide) pair per joint value v of the enumerated sites, both conditioned on v
    and the guide's own draw of them hidden, so Σ_v of their weights sums those sites exactly;
    ``[(model, guide)]`` without enumerated sites."""
    if not structure.enumerated:
        return [(model, guide)]
    names = [name for name, _ in structure.enumerated]
    pairs = []
    for values in itertools.product(*(support for _, support in structure.enumerated)):
        data = dict(zip(names, values))
        pairs.append((poutine.condition(model, data=data),
                      poutine.block(poutine.condition(guide, data=data), hide=names)))
    return pairs


def particle_traces(model: Callable, guide: Callable, k: int, particle_dim: int, *args,
                    **kwargs) -> tuple:
    """(model trace, guide trace) under a plate of ``k`` particles at ``particle_dim``."""
    particles = pyro.plate(PARTICLE_PLATE, k, dim=particle_dim)
    guide_tr = poutine.trace(particles(guide)).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(particles(model), trace=guide_tr)).get_trace(
        *args, **kwargs)
    return model_tr, guide_tr


def trace_log_density(trace, particle_dim: int, scaled: bool = False) -> torch.Tensor | None:
    """Σ of log fn(value) over the sample sites of a trace (or {name: site}) and all dims but the
    particle and ``"data"`` ones (``scaled``: as in :func:`log_weights`); None without sites."""
    total = None
    for name, site in getattr(trace, "nodes", trace).items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        frame = _data_frame(name, site)
        lp = site["fn"].log_prob(site["value"])
        if scaled:
            subsample = (frame.full_size or frame.size) / frame.size
            lp = scale_and_mask(lp, site["scale"] / subsample, site["mask"])
        else:
            lp = lp.double()
        nd = lp.dim()
        other = [d for d in range(nd) if d not in (nd + particle_dim, nd + frame.dim)]
        lp = lp.sum(other) if other else lp
        total = lp if total is None else total + lp
    return total


def trace_log_weights(model_trace, guide_trace, particle_dim: int, scaled: bool) -> torch.Tensor:
    """log p − log q (:func:`trace_log_density`) of a model trace replayed on a guide trace."""
    log_p = trace_log_density(model_trace, particle_dim, scaled)
    log_q = trace_log_density(guide_trace, particle_dim, scaled)
    if log_p is None or log_q is None:
        raise ConfigError("the model and guide have no sample sites")
    return log_p - log_q


def log_weights(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int, *args,
                chunk_size: int | None = None, scaled: bool = False,
                structure: Structure | None = None, **kwargs) -> torch.Tensor:
    """log w_bk for K = ``num_samples`` draws per example: shape (K, B), differentiable.
    ``scaled=False``: the β = 1 model in float64; ``scaled=True``: log p(x|z) + β·(log p(z) −
    log q(z|x)) with masks, N/B left to the caller. A pass holds at most ``chunk_size`` draws
    (None: :func:`default_chunk_size`); ``structure``: :func:`check_pair`'s. Enumerated sites:
    log w_bk = logsumexp_v log w_bkv over their values v (:func:`summed_pairs`)."""
    structure = structure or check_pair(model, guide, x, *args, **kwargs)
    pdim, pairs = structure.particle_dim, summed_pairs(model, guide, structure)
    chunk = chunk_size or default_chunk_size(x.device)
    per_pass, k_pass = max(1, chunk // num_samples), min(num_samples, chunk)
    columns = []
    for b0 in range(0, x.shape[0], per_pass):
        xb, a, kw = map_examples(lambda t: t[b0:b0 + per_pass], x, *args, **kwargs)
        rows = []
        for k0 in range(0, num_samples, k_pass):
            k = min(k_pass, num_samples - k0)
            lw = [trace_log_weights(*particle_traces(m, g, k, pdim, xb, *a, **kw), pdim, scaled)
                  .expand(k, xb.shape[0]) for m, g in pairs]
            rows.append(lw[0] if len(lw) == 1 else torch.stack(lw).logsumexp(0))
        columns.append(torch.cat(rows, dim=0))
    return torch.cat(columns, dim=1)
