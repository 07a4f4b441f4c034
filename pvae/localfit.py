"""Per-example Gaussian fits q(z_n) = N(m_n, diag s_n²) by gradient ascent on the ELBO
L_n = E_q[log p(x_n, z) − log q(z)] (for :mod:`pvae.amortization` and the semi-amortized
guide), and the fitted q as a Pyro guide, alone or mixed with q(z|x) (:func:`local_guide`)."""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from pyro.poutine.util import is_validation_enabled
from tqdm.auto import tqdm

from .errors import ConfigError, DivergenceError
from .nets import inv_softplus
from .weights import DATA_PLATE, check_count

MIN_SCALE = 1e-5


def local_guide(loc: torch.Tensor, scale: torch.Tensor, q: Callable | None = None,
                flows: Sequence = ()) -> Callable:
    """guide(x, idx): z_n ~ N(loc[idx_n], diag scale[idx_n]²) in the data plate, pushed through
    the transforms ``flows`` if any (z_n = f(z0_n): a flow guide's own family); given an
    amortized ``q``, z_n ~ ½ q(z|x_n) + ½ that local q instead."""

    def guide(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        local = dist.Normal(loc[idx], scale[idx]).to_event(1)
        if flows:
            local = dist.TransformedDistribution(local, list(flows))
        with pyro.plate(DATA_PLATE, x.shape[0]):
            return pyro.sample("z", local if q is None else _HalfHalf(q(x), local))

    return guide


def optimise_local(log_weight_fn: Callable, loc0: torch.Tensor, scale0: torch.Tensor, *,
                   num_particles: int = 16, lr: float = 1e-2, max_steps: int = 5000,
                   patience: int | None = 5, window: int = 50, progress: bool = False,
                   desc: str = "local fit", max_seconds: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, int, bool, list]:
    """Maximise Σ_n L_n over per-example (m_n, s_n = softplus(ρ_n) + 1e-5) with one Adam.

    ``log_weight_fn(loc, scale, S)``: ``(S, B)`` differentiable log p(x_n, z) − log q(z),
    z ~ q; only (m, ρ) get gradients. Stops (Cremer et al.) when ``patience`` windows of
    ``window`` steps bring no better mean ELBO, returning the last window's mean iterate, or
    after ``max_steps`` (``patience=None``: exactly, the last iterate) or once ``max_seconds``
    of wall time have passed (not converged; the last window's mean if one ended, else the
    last iterate). Returns detached
    ``(loc, scale, steps, converged, window_means)``."""
    for name, count in dict(max_steps=max_steps, window=window,
                            num_particles=num_particles).items():
        check_count(name, count)
    check_count("patience", patience, allow_none=True)
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    if max_seconds is not None and not max_seconds >= 0:
        raise ConfigError(f"max_seconds must be >= 0 or None, got {max_seconds}")
    deadline = math.inf if max_seconds is None else time.perf_counter() + max_seconds
    loc = loc0.detach().clone().requires_grad_(True)
    raw = inv_softplus((scale0.detach() - MIN_SCALE).clamp_min(1e-4)).requires_grad_(True)
    opt = torch.optim.Adam([loc, raw], lr=lr)
    best, bad, acc, history, converged, step = -math.inf, 0, 0.0, [], False, 0
    validate = is_validation_enabled()
    sum_loc, sum_raw, avg_loc, avg_raw = 0.0, 0.0, None, None
    with torch.enable_grad(), tqdm(total=max_steps, desc=desc, disable=not progress,
                                   leave=False) as bar:
        for step in range(1, max_steps + 1):
            with pyro.validation_enabled(validate and step == 1):
                elbo = log_weight_fn(loc, F.softplus(raw) + MIN_SCALE, num_particles).mean(0)
            mean_elbo = float(elbo.detach().mean())
            if not math.isfinite(mean_elbo):
                raise DivergenceError(f"the local ELBO became {mean_elbo} at step {step}; "
                                      f"lower lr (now {lr})")
            loc.grad, raw.grad = torch.autograd.grad(-elbo.sum(), [loc, raw])
            opt.step()
            bar.update(1)
            acc += mean_elbo
            sum_loc, sum_raw = sum_loc + loc.detach(), sum_raw + raw.detach()
            if step % window == 0:
                history.append(acc / window)
                avg_loc, avg_raw = sum_loc / window, sum_raw / window
                acc, sum_loc, sum_raw = 0.0, 0.0, 0.0
                bar.set_postfix(elbo=f"{history[-1]:.3f}")
                if history[-1] > best:
                    best, bad = history[-1], 0
                elif patience is not None:
                    bad += 1
                    if bad >= patience:
                        converged = True
                        break
            if time.perf_counter() > deadline:
                break
    if patience is not None and avg_loc is not None:
        loc, raw = avg_loc, avg_raw
    return loc.detach(), (F.softplus(raw) + MIN_SCALE).detach(), step, converged, history


class _HalfHalf(TorchDistribution):
    """The mixture ½a + ½b of two same-shaped distributions as an IS proposal: with particles
    at dim −2 the draws alternate a, b along it (stratified: unbiased for even k, without
    binomial noise in the split); otherwise each picks a or b at random."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, a: dist.Distribution, b: dist.Distribution):
        self.a, self.b = a, b
        super().__init__(a.batch_shape, a.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return _HalfHalf(self.a.expand(batch_shape), self.b.expand(batch_shape))

    def sample(self, sample_shape=torch.Size()):
        za, zb = self.a.sample(sample_shape), self.b.sample(sample_shape)
        shape = za.shape[: za.dim() - len(self.event_shape)]
        if len(self.batch_shape) >= 2:
            pick = (torch.arange(shape[-2], device=za.device) % 2 == 0).unsqueeze(-1).expand(shape)
        else:
            pick = torch.rand(shape, device=za.device) < 0.5
        return torch.where(pick.reshape(pick.shape + (1,) * len(self.event_shape)), za, zb)

    def log_prob(self, value):
        return torch.logaddexp(self.a.log_prob(value), self.b.log_prob(value)) - math.log(2.0)
