"""Per-example Gaussian fits q(z_n) = N(m_n, diag s_n²) by gradient ascent on the ELBO
L_n = E_q[log p(x_n, z) − log q(z)] with the model frozen (:func:`fit_local`, for
:mod:`pvae.amortization`, the refined IS proposal of :mod:`pvae.evaluate` and the
semi-amortized guide), and the fitted q as a Pyro guide, alone or mixed with q(z|x)
(:func:`local_guide`)."""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from pyro.poutine.util import is_validation_enabled
from tqdm.auto import tqdm

from .errors import ConfigError, DivergenceError
from .nets import inv_softplus
from .weights import (DATA_PLATE, check_count, check_pair, default_chunk_size,
                      frozen_parameters, log_weights, prepare_examples)

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


FAMILIES = {"normal": "diagonal Normal", "flow": "the guide's flow of a diagonal Normal"}


def shared_flows(q: dist.Distribution) -> list:
    """The transforms f of a guide's ``TransformedDistribution(q0(z0|x), f)`` when every one is
    a parameter-holding ``TransformModule`` (the same map for all x, as in the IAF guide), else [].

    Then (1/K) Σ_k q(z|u_k) is the push-forward by f of the mixture (1/K) Σ_k q0(z0|u_k), since
    each component's density is q0(f⁻¹(z)|u_k)·abs(det ∂f⁻¹/∂z) with one shared Jacobian. Its
    ``log_prob`` at a guide sample z = f(z0) reuses the flows' cached z0; the mixture of
    flows instead inverted f afresh, one latent coordinate after another (``z_dim`` passes
    whose errors and gradients multiply by up to e⁵ per coordinate, see the VampPrior notes
    of the docs)."""
    if not isinstance(q, dist.TransformedDistribution):
        return []
    flows = list(q.transforms)
    return flows if all(isinstance(t, dist.TransformModule) for t in flows) else []


@dataclass(frozen=True)
class LocalFit:
    """q*(z_n) = N(loc_n, diag scale_n²) (``family`` "flow": pushed through the guide's shared
    flow) and L[q*] for each of B examples, and the steps, convergence, window means
    (:func:`optimise_local`) and wall time of the fit."""

    loc: torch.Tensor
    scale: torch.Tensor
    elbo: torch.Tensor
    steps: int
    converged: bool
    history: tuple[float, ...]
    seconds: float
    family: str = "normal"


def is_vae(obj) -> bool:
    """Whether ``obj`` looks like a :class:`pvae.vae.VAE` (model, guide, q, z_dim, amortized)."""
    return all(hasattr(obj, a) for a in ("model", "guide", "q", "z_dim", "amortized"))


def encoder_moments(vae, x: torch.Tensor):
    """The amortized guide's (loc, scale) for ``x``: ``vae.q.encode(x)``, else the mean and
    standard deviation of ``vae.q(x)``, or of 256 of its draws (flows)."""
    if not vae.amortized:
        raise ConfigError("this VAE's guide is not amortized (it owns per-example parameters): "
                          "it has no encoder for new data; use init='prior'")
    with torch.no_grad():
        if hasattr(vae.q, "encode"):
            loc, scale = vae.q.encode(x)
        else:
            q = vae.q(x)
            try:
                loc, scale = q.mean, q.stddev
            except NotImplementedError:
                z = q.sample((256,))
                loc, scale = z.mean(0), z.std(0)
    return loc.detach(), scale.detach()


def guide_flows(vae, x: torch.Tensor) -> list:
    """The flow f shared by all x of ``vae``'s amortized guide q(z|x) = f(q0(z0|x)) (the IAF
    guide), else []: the local q* of :func:`fit_local` is then f(N(m, diag s²))."""
    if not (is_vae(vae) and vae.amortized):
        return []
    with torch.no_grad():
        return shared_flows(vae.q(x[:1]))


def optimised(vae_or_model, x, init, model_args: Sequence, chunk_size, **options):
    """The local guide's float64 log-weights function, :func:`optimise_local`'s results, its
    wall time and the flows of its family."""
    vae = vae_or_model if is_vae(vae_or_model) else None
    model = vae_or_model if vae is None else vae.model
    if not callable(model):
        raise ConfigError(f"expected a VAE or a model function, got {type(vae_or_model)}")
    x, args, _ = prepare_examples(model, x, *(model_args if vae is None else ()))
    idx = torch.arange(x.shape[0], device=x.device)
    if vae is not None and not vae.amortized:  # a local guide: pass its rows
        model = functools.partial(vae.model, idx=idx)
    flows = guide_flows(vae, x) if vae is not None else []
    if isinstance(init, str) and init == "encoder":
        if vae is None:
            raise ConfigError("init='encoder' needs a VAE (with an encoder); use init='prior'")
        if flows:
            with torch.no_grad():
                base = vae.q(x).base_dist.base_dist
            loc0, scale0 = base.loc.detach(), base.scale.detach()
        else:
            loc0, scale0 = encoder_moments(vae, x)
    elif isinstance(init, str) and init == "prior":
        if vae is None:
            with torch.no_grad(), poutine.block():
                z = poutine.trace(model).get_trace(x, *args).nodes.get("z")
            if z is None:
                raise ConfigError("the model has no latent site 'z'")
        loc0 = x.new_zeros(x.shape[0], z["fn"].event_shape[0] if vae is None else vae.z_dim)
        scale0 = torch.ones_like(loc0)
    elif isinstance(init, (tuple, list)) and len(init) == 2:
        loc0, scale0 = (t.detach().to(x) for t in init)
    else:
        raise ConfigError(f"init must be 'encoder', 'prior' or a (loc, scale) pair, got {init!r}")
    chunk = chunk_size or default_chunk_size(x.device)

    def pair(loc, scale):  # idx rides along after x: a pass reads its examples' rows
        guide = local_guide(loc, scale, flows=flows)
        return (lambda x_, i, *a: model(x_, *a)), (lambda x_, i, *a: guide(x_, i))

    structure = check_pair(*pair(loc0, scale0), x, idx, *args)

    def lw(loc, scale, s):
        return log_weights(*pair(loc, scale), x, s, idx, *args, chunk_size=chunk,
                           structure=structure)

    with frozen_parameters(vae_or_model):  # the model's parameters cost no gradients
        start = time.perf_counter()
        fitted = optimise_local(lambda *a: lw(*a).to(x.dtype), loc0, scale0, **options)
    return lw, fitted, time.perf_counter() - start, flows


def fit_local(vae_or_model, x: torch.Tensor, *, init="encoder", num_particles: int = 16,
              lr: float = 1e-2, max_steps: int = 5000, patience: int = 5, window: int = 50,
              elbo_samples: int = 1000, chunk_size: int | None = None, model_args: Sequence = (),
              progress: bool = True, max_seconds: float | None = None) -> LocalFit:
    """Fit q*(z_n) = N(m_n, diag s_n²) = argmax L[q] for every example of ``x``, decoder frozen;
    for a VAE whose guide has a flow f shared by all x, q*(z_n) = f(N(m_n, diag s_n²)), started
    at the guide's base (m, s) (``init="encoder"``). ``max_seconds`` bounds the fit's wall time.

    ``vae_or_model``: a :class:`pvae.vae.VAE` or a ``model(x, *model_args)`` with latent
    ``"z"`` in the ``"data"`` plate; ``init``: ``"encoder"``, ``"prior"`` (N(0, I)) or
    ``(loc, scale)``; the options: :func:`optimise_local`'s."""
    check_count("elbo_samples", elbo_samples)
    check_count("chunk_size", chunk_size, allow_none=True)
    lw, (loc, scale, steps, converged, history), seconds, flows = optimised(
        vae_or_model, x, init, model_args, chunk_size, num_particles=num_particles, lr=lr,
        max_steps=max_steps, patience=patience, window=window, progress=progress,
        max_seconds=max_seconds)
    with torch.no_grad():
        elbo = lw(loc, scale, elbo_samples).mean(0).to(x.dtype)
    return LocalFit(loc, scale, elbo, steps, converged, tuple(history), seconds,
                    "flow" if flows else "normal")
