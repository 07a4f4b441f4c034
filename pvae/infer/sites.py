"""A program's sample sites as plain values, and the losses of :mod:`pvae.infer.objectives` over
them without Pyro's tracing: the sums ``Trace_ELBO``, ``TraceMeanField_ELBO`` and :class:`IWAE`
form over a (model, guide) trace pair, written as functions ``torch.compile`` can take whole
(docs/training.rst, "Compiled steps"). :func:`verify_sites` compares a program's plain sites
with Pyro's trace of it, values included, before the plain losses are trusted."""
import math
from typing import Callable, NamedTuple

import pyro.poutine as poutine
import torch
from pyro.distributions import Distribution
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import kl_divergence


class Site(NamedTuple):
    """One sample site: its ``fn``, ``value`` and the ``scale`` on its log-density, Pyro's
    ``site["scale"]``: N/B on an observed site, β_t·N/B (a tensor; 0 masks the site) on a latent
    one. K vectorized draws lie along dim −2 of the values."""

    name: str
    fn: Distribution
    value: torch.Tensor
    scale: torch.Tensor | float
    observed: bool


def scaled(site: Site, term: torch.Tensor) -> torch.Tensor:
    """``term`` · scale, 0 where a tensor scale is 0 (``poutine.mask``'s zero, never 0·∞)."""
    if isinstance(site.scale, torch.Tensor):
        return torch.where(site.scale > 0, term * site.scale, term.new_zeros(()))
    return term if site.scale == 1.0 else term * site.scale


class SiteRecorder:
    """The plain ``sample(name, fn, obs=None)`` effect: an observed site keeps ``obs``; a latent
    site takes ``values[name]`` if given, else ``fn.rsample((K,))`` (K = ``particles``, when
    ``fn`` has no batch dim −2 yet) or ``fn.rsample()``; every site is appended to :attr:`sites`."""

    def __init__(self, latent_scale: torch.Tensor | float, data_scale: float = 1.0,
                 particles: int | None = None, values: dict | None = None):
        self.latent_scale, self.data_scale = latent_scale, data_scale
        self.particles, self.values, self.sites = particles, values, []

    def __call__(self, name: str, fn: Distribution, obs: torch.Tensor | None = None):
        if obs is not None:
            value, scale = obs, self.data_scale
        else:
            scale = self.latent_scale
            if self.values is not None:
                value = self.values[name]
            else:  # a site drawn from another's particles has them already (Pyro's expand)
                particles = self.particles is not None and len(fn.batch_shape) < 2
                value = fn.rsample((self.particles,) if particles else ())
        self.sites.append(Site(name, fn, value, scale, obs is not None))
        return value


def log_density(sites: list[Site], particle_dim: int = -2) -> torch.Tensor:
    """Σ_sites log fn(value) unscaled, float64, summed over every dim but ``particle_dim`` and
    the ``"data"`` dim −1: :func:`~pvae.infer.logweights.trace_log_density` of the sites."""
    total = None
    for site in sites:
        lp = site.fn.log_prob(site.value).double()
        nd = lp.dim()
        other = [d for d in range(nd) if d not in (nd + particle_dim, nd - 1)]
        lp = lp.sum(other) if other else lp
        total = lp if total is None else total + lp
    return total


def _log_prob_sums(sites: list[Site]) -> list[torch.Tensor]:
    return [scaled(s, s.fn.log_prob(s.value)).sum() for s in sites]


def trace_elbo_loss(model: list[Site], guide: list[Site], num_particles: int) -> torch.Tensor:
    """``Trace_ELBO``'s loss of reparameterized guides: −(Σ_model scale·log p − Σ_guide
    scale·log q)/K, summed in Pyro's order (model sites, then guide sites)."""
    elbo = 0.0
    for term in _log_prob_sums(model):
        elbo = elbo + term
    for term in _log_prob_sums(guide):
        elbo = elbo - term
    return -elbo / num_particles


def meanfield_loss(model: list[Site], guide: list[Site], num_particles: int,
                   analytic: dict[str, bool] | None = None) -> torch.Tensor:
    """``TraceMeanField_ELBO``'s loss: Σ_observed −scale·log p + Σ_latent scale·KL(q || p),
    the KL analytic where ``analytic[name]`` (default: :func:`analytic_kl`), else scale·(log q −
    log p) at the draw."""
    q_sites, elbo = {s.name: s for s in guide}, 0.0
    for site in model:
        if site.observed:
            elbo = elbo + scaled(site, site.fn.log_prob(site.value)).sum()
            continue
        q = q_sites[site.name]
        if analytic[site.name] if analytic is not None else analytic_kl(q.fn, site.fn):
            batch = site.value.shape[:site.value.dim() - len(q.fn.event_shape)]
            elbo = elbo - scaled(q, kl_divergence(q.fn, site.fn).expand(batch)).sum()
        else:
            elbo = elbo + scaled(site, site.fn.log_prob(site.value)).sum() \
                - scaled(q, q.fn.log_prob(q.value)).sum()
    return -elbo / num_particles


def analytic_kl(q: Distribution, p: Distribution) -> bool:
    """Whether torch computes KL(q || p) in closed form for these two distributions."""
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


def analytic_sites(model: list[Site], guide: list[Site]) -> dict[str, bool]:
    """``{latent site: analytic_kl(q, p)}``, what :func:`meanfield_loss` takes."""
    q_sites = {s.name: s for s in guide}
    return {s.name: analytic_kl(q_sites[s.name].fn, s.fn) for s in model if not s.observed}


def iwae_loss(model: list[Site], guide: list[Site], num_particles: int) -> torch.Tensor:
    """:class:`~pvae.infer.objectives.IWAE`'s loss: −(N/B)·Σ_b [logsumexp_k w_bk − log K],
    w_bk = Σ_model (scale/(N/B))·log p − Σ_guide (scale/(N/B))·log q, each (K, B); N/B is the
    scale of the observed sites."""
    observed = next(s for s in model if s.observed)
    data_scale = observed.scale
    log_p, log_q = (_weight(sites, data_scale) for sites in (model, guide))
    lw = (log_p - log_q).expand(num_particles, observed.value.shape[0])
    return -data_scale * (torch.logsumexp(lw, dim=0) - math.log(num_particles)).sum()


def _weight(sites: list[Site], data_scale: float) -> torch.Tensor:
    total = None
    for s in sites:
        term = scaled(s._replace(scale=s.scale / data_scale), s.fn.log_prob(s.value))
        total = term if total is None else total + term
    return total


SITE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "elbo": trace_elbo_loss, "meanfield": meanfield_loss, "iwae": iwae_loss}
"""The plain loss of each objective of :data:`pvae.infer.objectives.OBJECTIVES`, by its name."""


def vectorized(name: str, num_particles: int) -> bool:
    """Whether objective ``name`` draws its ``num_particles`` at once (a particle dim −2)."""
    return name == "iwae" or num_particles > 1


def pyro_sites(model: Callable, guide: Callable, *args) -> tuple[dict, dict, dict]:
    """The sample sites of ``guide``'s trace and of ``model``'s replayed on it (no subsample
    sites), and the ``pyro.param`` sites of both."""
    guide_tr = poutine.trace(guide).get_trace(*args)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
    params = {n: s for tr in (guide_tr, model_tr) for n, s in tr.nodes.items()
              if s["type"] == "param"}
    guide_sites, model_sites = ({n: s for n, s in prune_subsample_sites(tr).nodes.items()
                                 if s["type"] == "sample"} for tr in (guide_tr, model_tr))
    return guide_sites, model_sites, params


def verify_sites(traced: tuple[dict, dict], plain: tuple[list[Site], list[Site]]
                 ) -> str | None:
    """None when the plain (guide, model) sites are Pyro's traced ones (the first two of
    :func:`pyro_sites`, run on the same draws): the same names in order, observed flags, values,
    scales, masks and log-densities (to float32 rounding), every guide site reparameterized;
    else what differs."""
    for role, pyro_side, mine in zip(("guide", "model"), traced, plain):
        if list(pyro_side) != [s.name for s in mine]:
            return f"the {role}'s sites are {list(pyro_side)} under Pyro but " \
                   f"{[s.name for s in mine]} in the plain program"
        for site in mine:
            theirs = pyro_side[site.name]
            problem = _site_difference(role, site, theirs)
            if problem:
                return problem
    return None


def _site_difference(role: str, site: Site, theirs: dict) -> str | None:
    where = f"{role} site {site.name!r}"
    if isinstance(theirs["mask"], torch.Tensor):
        return f"{where} has a tensor mask"
    if role == "guide" and not theirs["fn"].has_rsample:
        return f"{where} has no rsample (Trace_ELBO adds a score-function term there)"
    if theirs["is_observed"] != site.observed:
        return f"{where} is observed in one program only"
    if tuple(theirs["value"].shape) != tuple(site.value.shape) \
            or not torch.allclose(theirs["value"], site.value, rtol=1e-5, atol=1e-6):
        return f"{where} has other values"
    scale = site.scale if not isinstance(site.scale, torch.Tensor) else float(site.scale)
    masked = theirs["mask"] is False
    if masked != (scale == 0) or (not masked and not math.isclose(
            float(theirs["scale"]), scale, rel_tol=1e-6)):
        return f"{where} has scale {theirs['scale']} (mask {theirs['mask']}) under Pyro, " \
               f"{scale} in the plain program"
    mine = float(scaled(site, site.fn.log_prob(site.value)).sum())
    pyro_lp = theirs["fn"].log_prob(theirs["value"])
    pyro_lp = float((pyro_lp * (0.0 if masked else float(theirs["scale"]))).sum())
    if not math.isclose(mine, pyro_lp, rel_tol=1e-5, abs_tol=1e-4):
        return f"{where} has log-density {mine} in the plain program, {pyro_lp} under Pyro"
    return None
