"""Per-example fits q*(z_n) = N(m_n, diag s_n²) = argmax L_n, L_n = E_q[log p(x_n, z) − log q(z)],
with the model frozen (:func:`fit_local`), and q* as a Pyro guide, alone or mixed with q(z|x)
(:func:`local_guide`; the fit: docs/amortization.rst)."""
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.poutine.util import is_validation_enabled, site_is_subsample

from ..checks import check_count
from ..distributions import MIN_SCALE, EvenMixture, inv_softplus
from ..errors import ConfigError, DivergenceError
from ..progress import progress_bar
from .host import Encoder, Host, frozen_parameters, map_examples, prepare_examples
from .logweights import DATA_PLATE, check_pair, log_weights

FAMILIES = {"normal": "diagonal Normal", "flow": "the guide's flow of a diagonal Normal"}


TAILS = 3.0
"""Degrees of freedom of the Student-t that widens a local proposal of a model without encoder."""


def local_guide(loc: torch.Tensor, scale: torch.Tensor, q: Callable | None = None,
                flows: Sequence = (), tails: float | None = None) -> Callable:
    """guide(x, idx): z_n ~ N(loc[idx_n], diag scale[idx_n]²) in the data plate, pushed through
    the transforms ``flows`` if any (z_n = f(z0_n): a flow guide's own family); given an
    amortized ``q`` (x ↦ q(z|x)), z_n ~ ½ q(z|x_n) + ½ that local q instead; given ``tails``
    ν, ½ that local q + ½ ∏_d t_ν(loc_nd, scale_nd), whose heavier tails bound the weights."""

    def guide(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        local = dist.Normal(loc[idx], scale[idx]).to_event(1)
        if flows:
            local = dist.TransformedDistribution(local, list(flows))
        other = q(x) if q is not None else None if tails is None else \
            dist.StudentT(tails, loc[idx], scale[idx]).to_event(1)
        with pyro.plate(DATA_PLATE, x.shape[0]):
            return pyro.sample("z", local if other is None else EvenMixture(other, local))

    return guide


def optimise_local(log_weight_fn: Callable, loc0: torch.Tensor, scale0: torch.Tensor, *,
                   num_particles: int = 16, lr: float = 1e-2, max_steps: int = 5000,
                   patience: int | None = 5, window: int = 50, progress: bool = False,
                   desc: str = "local fit", max_seconds: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, int, bool, list]:
    """Maximise Σ_n L_n over per-example (m_n, s_n = softplus(ρ_n) + MIN_SCALE) with one Adam,
    ``log_weight_fn(loc, scale, S)`` giving the ``(S, B)`` log p(x_n, z) − log q(z), z ~ q, up to
    ``max_steps`` (``patience=None``: exactly) or ``max_seconds`` (the stopping rule:
    docs/amortization.rst); returns detached ``(loc, scale, steps, converged, window_means)``."""
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
    with torch.enable_grad(), progress_bar(total=max_steps, desc=desc, enabled=progress,
                                           leave=False, unit="step") as bar:
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


@dataclass(frozen=True)
class LocalFit:
    """q*(z_n) = N(loc_n, diag scale_n²) (``family`` "flow": through ``flows``) and L[q*] per
    example, with the fit's steps, convergence, window means and wall time."""

    loc: torch.Tensor
    scale: torch.Tensor
    elbo: torch.Tensor
    steps: int
    converged: bool
    history: tuple[float, ...]
    seconds: float
    family: str = "normal"
    flows: tuple = ()

    def guide(self, q: Callable | None = None, tails: float | None = None) -> Callable:
        """The fitted q* as a Pyro guide ``guide(x, idx)`` (:func:`local_guide`'s mixtures)."""
        return local_guide(self.loc, self.scale, q, self.flows, tails)


def _start(model: Callable, x: torch.Tensor, args: tuple, host: Host | None, init):
    """``(loc0, scale0, flows)``: where the fits start, and the flow of the guide's family."""
    encoder = host if isinstance(host, Encoder) and host.amortized else None
    if isinstance(init, (tuple, list)) and len(init) == 2:
        flows = encoder.encode(x[:1])[2] if encoder is not None else []
        return (*(t.detach().to(x) for t in init), flows)
    if init == "encoder":
        if encoder is None:
            raise ConfigError("init='encoder' starts each fit from the encoder: pass host=vae of "
                              "a VAE with an amortized guide, or use init='prior'", "init")
        loc, scale, flows = encoder.encode(x)
        return loc.detach(), scale.detach(), flows
    if init != "prior":
        raise ConfigError(f"init must be 'encoder', 'prior' or a (loc, scale) pair, got {init!r}",
                          "init")
    if isinstance(host, Encoder):
        z_dim, flows = host.z_dim, (encoder.encode(x[:1])[2] if encoder is not None else [])
    else:
        with torch.no_grad(), poutine.block():
            z = poutine.trace(model).get_trace(x, *args).nodes.get("z")
        if z is None:
            raise ConfigError("the model has no latent site 'z'")
        z_dim, flows = z["fn"].event_shape[0], []
    loc = x.new_zeros(x.shape[0], z_dim)
    return loc, torch.ones_like(loc), flows


def _check_one_latent(model: Callable, x: torch.Tensor, args: tuple) -> None:
    """ConfigError unless the model's one latent site per example is ``"z"``."""
    first, a, _ = map_examples(lambda t: t[:1], x, *args)
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(first, *a)
    latent = [n for n, s in trace.nodes.items() if s["type"] == "sample"
              and not s["is_observed"] and not site_is_subsample(s)]
    if latent != ["z"]:
        raise ConfigError(f"a local fit q*(z) covers one latent site, 'z', and this model has "
                          f"the latent sites {latent} (two stochastic layers?); the local fits "
                          "(the refined proposal, the amortization gap) support models of one "
                          "stochastic layer: use the encoder proposal or AIS for this one")


def fit_local(model: Callable, x: torch.Tensor, *, host: Host | None = None, init=None,
              num_particles: int = 16, lr: float = 1e-2, max_steps: int = 5000,
              patience: int | None = 5, window: int = 50, elbo_samples: int = 1000,
              chunk_size: int | None = None, model_args: Sequence = (), progress: bool = True,
              max_seconds: float | None = None, desc: str = "local fit") -> LocalFit:
    """q*(z_n) = argmax L over N(m_n, diag s_n²) (through a host guide's shared flow) for every
    example of ``x``, ``model(x, *model_args)`` (latent ``"z"`` in ``"data"``) frozen. ``init``:
    ``"encoder"`` (default with an amortized host), ``"prior"`` (N(0, I)) or ``(loc, scale)``;
    L[q*] takes ``elbo_samples`` draws; the rest is :func:`optimise_local`'s."""
    check_count("elbo_samples", elbo_samples)
    check_count("chunk_size", chunk_size, allow_none=True)
    x, args, _ = prepare_examples(host, x, *model_args)
    _check_one_latent(model, x, args)
    if init is None:
        init = "encoder" if isinstance(host, Encoder) and host.amortized else "prior"
    loc0, scale0, flows = _start(model, x, args, host, init)
    idx = torch.arange(x.shape[0], device=x.device)

    def pair(loc, scale):  # idx rides along after x: a pass reads its examples' rows
        guide = local_guide(loc, scale, flows=flows)
        return (lambda x_, i, *a: model(x_, *a)), (lambda x_, i, *a: guide(x_, i))

    structure = check_pair(*pair(loc0, scale0), x, idx, *args)

    def lw(loc, scale, s):
        return log_weights(*pair(loc, scale), x, s, idx, *args, chunk_size=chunk_size,
                           structure=structure)

    with frozen_parameters(host):  # the model's parameters cost no gradients
        start = time.perf_counter()
        loc, scale, steps, converged, history = optimise_local(
            lambda *a: lw(*a).to(x.dtype), loc0, scale0, num_particles=num_particles, lr=lr,
            max_steps=max_steps, patience=patience, window=window, progress=progress,
            desc=desc, max_seconds=max_seconds)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            elbo = lw(loc, scale, elbo_samples).mean(0).to(x.dtype)
    return LocalFit(loc, scale, elbo, steps, converged, tuple(history), seconds,
                    "flow" if flows else "normal", tuple(flows))
