"""Objectives, picked by name from :data:`OBJECTIVES`, and the β warm-up schedule; β scales the
``"z"`` site, so an ELBO here minimises E_q[−log p(x|z)] + β·KL(q(z|x) || p(z))."""
import math
from typing import Callable

import pyro.infer
import torch
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan

from ..checks import check_count
from ..errors import ConfigError
from .logweights import DATA_PLATE, particle_traces, trace_log_weights


def elbo(num_particles: int = 1) -> pyro.infer.ELBO:
    """Loss = −ELBO = E_q[−log p(x, z) + log q(z|x)], a Monte Carlo estimate (``Trace_ELBO``)."""
    return pyro.infer.Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)


def meanfield(num_particles: int = 1) -> pyro.infer.ELBO:
    """Loss = E_q[−log p(x|z)] + KL(q(z|x) || p(z)), the KL analytic where it exists."""
    return pyro.infer.TraceMeanField_ELBO(num_particles=num_particles,
                                          vectorize_particles=num_particles > 1)


class IWAE(pyro.infer.ELBO):
    """The importance-weighted bound of Burda et al. (2016), per example: loss = −(N/B)·Σ_b
    [logsumexp_k w_bk − log K] for K = ``num_particles`` draws z_bk ~ q(z|x_b), N/B applied
    *after* the logsumexp (Pyro's ``RenyiELBO(alpha=0)`` applies it inside). Every site must
    sit in ``"data"`` at dim −1 alone, the guide with ``rsample``; with ``"z"`` scaled by β it
    bounds log p(x) only at β = 1 (docs/swapping.rst)."""

    def __init__(self, num_particles: int = 1):
        super().__init__(num_particles=check_count("num_particles", int(num_particles)),
                         max_plate_nesting=1, vectorize_particles=True)

    def _get_trace(self, model, guide, args, kwargs):
        """One vectorized (model, guide) trace pair over the K particles at dim −2."""
        return particle_traces(model, guide, self.num_particles, -2, *args, **kwargs)

    def log_weights(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, float]:
        """The ``(K, B)`` log-weights w_bk of the batch ``args[0]`` and N/B (needs ``rsample``)."""
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        lw = trace_log_weights(model_trace, guide_trace, -2, scaled=True)
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site) \
                    and not site["fn"].has_rsample:
                raise ConfigError(f"the iwae loss needs a reparameterizable guide; site {name!r} "
                                  f"has {type(site['fn']).__name__}, which has no rsample")
        frame = next(f for trace in (model_trace, guide_trace) for site in trace.nodes.values()
                     for f in site.get("cond_indep_stack", ()) if f.name == DATA_PLATE)
        data_scale = float((frame.full_size or frame.size) / frame.size)
        return lw.expand(self.num_particles, args[0].shape[0]), data_scale

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−(N/B)·Σ_b [logsumexp_k w_bk − log K], differentiable in the parameters."""
        lw, data_scale = self.log_weights(model, guide, *args, **kwargs)
        loss = -data_scale * (torch.logsumexp(lw, dim=0) - math.log(self.num_particles)).sum()
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss as a float, without gradients."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss as a float, after backpropagating it into every param's ``.grad``."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())


OBJECTIVES: dict[str, Callable[..., pyro.infer.ELBO]] = {
    "elbo": elbo, "meanfield": meanfield, "iwae": IWAE}


def enumerated_elbo(num_particles: int = 1) -> pyro.infer.ELBO:
    """Loss = −ELBO with the sites marked ``infer={"enumerate": "parallel"}`` summed exactly
    (``TraceEnum_ELBO``, one plate: ``"data"``): for a guide q(y|x) q(z|x,y),
    −Σ_y q(y|x) E_q(z|x,y)[log p(x, y, z) − log q(y|x) − log q(z|x,y)]."""
    return pyro.infer.TraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=1,
                                     vectorize_particles=num_particles > 1)


def make_loss(name: str = "elbo", num_particles: int = 1,
              enumerated: bool = False) -> pyro.infer.ELBO:
    """The objective ``name`` with ``num_particles`` samples per example; ``enumerated``: for a
    model with enumerated discrete sites (``"elbo"`` then is :func:`enumerated_elbo`)."""
    if name not in OBJECTIVES:
        raise ConfigError(
            f"unknown loss {name!r}; choose one of: {', '.join(sorted(OBJECTIVES))}")
    if int(num_particles) < 1:
        raise ConfigError(f"num_particles must be >= 1, got {num_particles}", "num_particles")
    if enumerated and name != "elbo":
        raise ConfigError(f"loss {name} cannot sum an enumerated discrete latent (the label y "
                          "of supervision semi); use loss elbo, which is then TraceEnum_ELBO",
                          "loss")
    return (enumerated_elbo if enumerated else OBJECTIVES[name])(num_particles=int(num_particles))
