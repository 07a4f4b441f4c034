"""Objectives: the loss SVI minimises, and the β warm-up schedule.

Every objective is picked by name from :data:`OBJECTIVES`. β itself is not part of the
loss object: :class:`pvae.vae.VAE` scales the ``"z"`` site with ``poutine.scale``, so any
ELBO here minimises E_q[-log p(x|z)] + β·KL(q(z|x) || p(z)); see :class:`IWAE` for
what β means in the importance-weighted bound.
"""
from __future__ import annotations

import math
from typing import Callable

import pyro
import pyro.infer
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan

from .errors import ConfigError
from .weights import DATA_PLATE, Structure, log_weights

PARTICLE_PLATE = "iwae_particles"


def elbo(num_particles: int = 1) -> pyro.infer.ELBO:
    """Loss = −ELBO = E_q[−log p(x, z) + log q(z|x)], a Monte Carlo estimate (``Trace_ELBO``)."""
    return pyro.infer.Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)


def meanfield(num_particles: int = 1) -> pyro.infer.ELBO:
    """Loss = E_q[−log p(x|z)] + KL(q(z|x) || p(z)), the KL analytic where it exists."""
    return pyro.infer.TraceMeanField_ELBO(num_particles=num_particles,
                                          vectorize_particles=num_particles > 1)


class IWAE(pyro.infer.ELBO):
    """The importance-weighted bound of Burda et al. (2016), per example.

    For each example x_b, with K = ``num_particles`` draws z_bk ~ q(z|x_b) and log-weights
    ``w_bk = log p(x_b|z_bk) + log p(z_bk) − log q(z_bk|x_b)``::

        L_K = Σ_b [ logsumexp_k w_bk − log K ],   loss = −(N/B)·L_K

    where N/B is the ``"data"`` plate's subsample scale. E[L_1] is the ELBO; E[L_K] ≤ Σ_b log p(x_b)
    and rises towards it as K grows. The logsumexp runs over particles for each
    example separately, and the subsample scale N/B multiplies the bound *after* it.
    Pyro's ``RenyiELBO(alpha=0)`` agrees with this only when every site lies in the data
    plate and the plate is not subsampled: it applies N/B to the log-weights *inside*
    the logsumexp, and as soon as one site lies outside the plate it sums the
    log-weights over the batch before the logsumexp, which is the much looser bound for
    the whole batch as one joint latent. Here a site outside the plate is an error
    (:meth:`log_weights` returns the ``(K, B)`` matrix all of these are built from).

    β: the VAE scales the ``"z"`` site by β in the model and the guide, so the weights
    become ``log p(x|z) + β·(log p(z) − log q(z|x))`` and the objective is
    E log (1/K) Σ_k p(x|z_k) [p(z_k)/q(z_k|x)]^β. For K = 1 that is the β-ELBO; for β = 1
    it is the IWAE bound on log p(x); otherwise it bounds log ∫ p(x|z) p(z)^β q(z|x)^(1−β) dz,
    not log p(x). β = 0 (the first step of a warm-up) drops the z terms, leaving
    log (1/K) Σ_k p(x|z_k), a bound on log E_q p(x|z).

    Every sample site must sit in exactly one plate, the VAE's ``"data"`` plate at dim −1,
    and the guide must be reparameterizable; the gradient is the standard reparameterized
    IWAE gradient. The weights are :func:`pvae.weights.log_weights` with ``scaled=True``,
    the particles vectorized with an outer plate at dim −2.
    """

    def __init__(self, num_particles: int = 1):
        super().__init__(num_particles=int(num_particles), max_plate_nesting=1,
                         vectorize_particles=True)

    def _particles(self, fn):
        """``fn`` inside the particle plate of :meth:`log_weights` (K draws at dim −2)."""
        return pyro.plate(PARTICLE_PLATE, self.num_particles, dim=-2)(fn)

    def _get_trace(self, model, guide, args, kwargs):
        """One vectorized (model, guide) trace pair over all K particles, for inspection."""
        guide_trace = poutine.trace(self._particles(guide)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(self._particles(model), trace=guide_trace)).get_trace(*args, **kwargs)
        return model_trace, guide_trace

    def log_weights(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, float]:
        """Return the ``(K, B)`` log-weights w_bk (β applied, subsample scale removed) and N/B.

        ``args[0]`` is the batch x. The traces of the one pass are kept to check that every
        guide site has ``rsample`` and to read N/B off the ``"data"`` plate.
        """
        traces = []

        def recorded(fn):
            def run(*a, **kw):
                trace = poutine.trace(fn).get_trace(*a, **kw)
                traces.append(trace)
                return trace.nodes["_RETURN"]["value"]
            return run

        x, *rest = args
        lw = log_weights(recorded(model), recorded(guide), x, self.num_particles, *rest,
                         scaled=True, structure=Structure(particle_dim=-2), **kwargs)
        guide_trace, model_trace = traces
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site) \
                    and not site["fn"].has_rsample:
                raise ConfigError(f"the iwae loss needs a reparameterizable guide; site {name!r} "
                                  f"has {type(site['fn']).__name__}, which has no rsample")
        frame = next(f for trace in (model_trace, guide_trace) for site in trace.nodes.values()
                     for f in site.get("cond_indep_stack", ()) if f.name == DATA_PLATE)
        return lw, float((frame.full_size or frame.size) / frame.size)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−(N/B)·Σ_b [logsumexp_k w_bk − log K], differentiable in the parameters."""
        lw, data_scale = self.log_weights(model, guide, *args, **kwargs)
        bound = (torch.logsumexp(lw, dim=0) - math.log(self.num_particles)).sum()
        loss = -data_scale * bound
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss as a float, without gradients."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss as a float, after backpropagating it into every param's ``.grad``.

        ``SVI.step`` collects the params this touches with ``poutine.trace(param_only=True)``.
        """
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())


def iwae(num_particles: int = 1) -> IWAE:
    """Loss = −Σ_b [logsumexp_k w_bk − log K]: the per-example IWAE bound with K particles."""
    return IWAE(num_particles=num_particles)


OBJECTIVES: dict[str, Callable[..., pyro.infer.ELBO]] = {
    "elbo": elbo,
    "meanfield": meanfield,
    "iwae": iwae,
}


def make_loss(name: str = "elbo", num_particles: int = 1) -> pyro.infer.ELBO:
    """Return the objective ``name`` with ``num_particles`` samples per example."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown loss {name!r}; choose one of: {', '.join(sorted(OBJECTIVES))}")
    if int(num_particles) < 1:
        raise ConfigError(f"--num-particles must be >= 1, got {num_particles}")
    return OBJECTIVES[name](num_particles=int(num_particles))


def beta_at(step: int, beta: float, warmup_steps: int) -> float:
    """β at optimisation step ``step``: β·min(1, step / warmup_steps), or β with no warm-up.

    The ramp is linear in steps (not epochs): 0 at step 0, ``beta`` from ``warmup_steps`` on.
    """
    if warmup_steps <= 0:
        return float(beta)
    return float(beta) * min(1.0, step / warmup_steps)
