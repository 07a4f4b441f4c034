"""Non-amortized and semi-amortized inference, and the amortization-gap report.

For a trained model p(x, z) and its amortized guide q_φ(z|x), the gap between log p(x) and
the ELBO L[q] = E_q[log p(x, z) − log q(z|x)] splits in two (Cremer, Li & Duvenaud 2018):

    log p(x) − L[q] = (log p(x) − L[q*]) + (L[q*] − L[q])
                       approximation gap    amortization gap

where q* is the best diagonal Gaussian for this one x, found by optimising a local
N(m, diag s²) per example with the decoder frozen (:func:`fit_local`). The approximation
gap is the price of the variational family, the amortization gap the price of sharing one
encoder across the data set. :func:`refine` and :class:`pvae.guides.SemiAmortizedGuide`
sit in between (Kim et al. 2018): the encoder's output refined by a few SVI steps.

Every ELBO here is the β = 1 bound on log p(x): the sites' ``poutine.scale`` factors (β,
N/B) and masks are not applied, whatever the model was trained with.
"""
from __future__ import annotations

import contextlib
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

from .errors import ConfigError, DataError, DivergenceError
from .evaluate import DEFAULT_CHUNK_SIZE, _inspect, _log_weights
from .nets import inv_softplus

MIN_SCALE = 1e-5
LogWeights = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class LocalFit:
    """A fitted local guide q*(z_n) = N(loc_n, diag scale_n²) for each of B examples.

    ``elbo`` is L[q*] per example (``elbo_samples`` Monte Carlo samples), ``steps`` the
    optimisation steps taken, ``converged`` whether the patience rule stopped it before
    ``max_steps``, ``history`` the window averages of the batch-mean ELBO, ``seconds`` the
    wall time of the optimisation.
    """

    loc: torch.Tensor
    scale: torch.Tensor
    elbo: torch.Tensor
    steps: int
    converged: bool
    history: tuple[float, ...]
    seconds: float

    def distribution(self) -> dist.Distribution:
        """q*(z) with batch shape ``(B,)`` and event shape ``(z_dim,)``."""
        return dist.Normal(self.loc, self.scale).to_event(1)


def _mean_stderr(v: torch.Tensor) -> tuple[float, float | None]:
    v = v.detach().double()
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else None
    return float(v.mean()), se


@dataclass(frozen=True)
class GapReport:
    """Per-example log p(x), L[q*] and L[q] (nats) for n examples, and the two gaps.

    approximation gap = log p(x) − L[q*]; amortization gap = L[q*] − L[q]. ``log_px`` is
    the importance-sampled estimate with the proposal named by ``log_px_proposal``
    (``"mixture"`` ½q + ½q*, ``"amortized"`` q or ``"local"`` q*); ``log_px_amortized`` is
    the estimate with q alone.
    """

    log_px: torch.Tensor
    log_px_proposal: str
    log_px_amortized: torch.Tensor
    elbo_local: torch.Tensor
    elbo_amortized: torch.Tensor
    seconds_amortized: float
    seconds_local: float
    num_samples: int
    elbo_samples: int
    local_steps: int
    local_converged: bool

    @property
    def n(self) -> int:
        return int(self.log_px.numel())

    @property
    def approximation_gap(self) -> torch.Tensor:
        """log p(x) − L[q*] per example."""
        return self.log_px - self.elbo_local

    @property
    def amortization_gap(self) -> torch.Tensor:
        """L[q*] − L[q] per example."""
        return self.elbo_local - self.elbo_amortized

    @property
    def inference_gap(self) -> torch.Tensor:
        """log p(x) − L[q] = approximation gap + amortization gap, per example."""
        return self.log_px - self.elbo_amortized

    def to_json(self) -> dict:
        """Means over the examples, each with its standard error (``_stderr``; None if n < 2)."""
        out: dict = {"n": self.n}
        named = {"log_px": self.log_px, "elbo_local": self.elbo_local,
                 "elbo_amortized": self.elbo_amortized,
                 "approximation_gap": self.approximation_gap,
                 "amortization_gap": self.amortization_gap, "inference_gap": self.inference_gap,
                 "log_px_amortized": self.log_px_amortized}
        for key, values in named.items():
            out[key], out[f"{key}_stderr"] = _mean_stderr(values)
        out.update(
            seconds_per_example_amortized=self.seconds_amortized / self.n,
            seconds_per_example_local=self.seconds_local / self.n,
            log_px_proposal=self.log_px_proposal, num_samples=self.num_samples,
            elbo_samples=self.elbo_samples, local_steps=self.local_steps,
            local_converged=self.local_converged,
        )
        return out


def log_weights(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int,
                *args, chunk_size: int | None = None, structure=None) -> torch.Tensor:
    """log p(x, z_s) − log q(z_s|x) for z_s ~ q, shape ``(num_samples, B)``; differentiable.

    The draws and log-densities are :mod:`pvae.evaluate`'s (every sample site in the
    ``"data"`` plate, scales and masks ignored: the β = 1 bound), kept differentiable and
    for all of ``x`` at once. One pass holds at most ``chunk_size`` draws (samples ×
    examples). ``structure`` is a check of the pair made once by the caller; without it the
    pair is checked here.
    """
    structure = structure or _inspect(model, guide, x, args, {})
    chunk = max(1, int(chunk_size or DEFAULT_CHUNK_SIZE) // x.shape[0])
    parts = [_log_weights(model, guide, x, min(chunk, num_samples - s), structure, args, {})
             for s in range(0, int(num_samples), chunk)]
    return torch.cat(parts, dim=0).to(x.dtype)


def elbo_per_example(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int,
                     *args, chunk_size: int | None = None, structure=None) -> torch.Tensor:
    """L[q] per example: the mean over ``num_samples`` draws of log p(x, z) − log q(z|x)."""
    with torch.no_grad():
        return log_weights(model, guide, x, num_samples, *args, chunk_size=chunk_size,
                           structure=structure).mean(0)


def local_guide(loc: torch.Tensor, scale: torch.Tensor) -> Callable:
    """A guide function ``guide(x, idx=None)``: z_n ~ N(loc_n, diag scale_n²) in the data plate.

    ``idx`` selects rows of ``loc``/``scale`` when the examples are a subset.
    """

    def guide(x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        m, s = (loc, scale) if idx is None else (loc[idx], scale[idx])
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(m, s).to_event(1))

    return guide


def _check_local_pair(model: Callable, loc: torch.Tensor, scale: torch.Tensor, x: torch.Tensor,
                      args: tuple):
    """:mod:`pvae.evaluate`'s check of (model, local guide), made once before a fit.

    The check runs on the first examples of ``x``, so the guide reads their rows of ``loc``.
    """
    guide = local_guide(loc, scale)
    return _inspect(model, lambda x_, *a: guide(x_, torch.arange(x_.shape[0], device=x_.device)),
                    x, args, {})


def _check_budget(**values: int | None) -> None:
    for name, v in values.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")


def optimise_local(log_weight_fn: LogWeights, loc0: torch.Tensor, scale0: torch.Tensor, *,
                   num_particles: int = 16, lr: float = 1e-2, max_steps: int = 5000,
                   patience: int | None = 5, window: int = 50, progress: bool = False,
                   desc: str = "local fit") -> tuple[torch.Tensor, torch.Tensor, int, bool, list]:
    """Maximise Σ_n L_n(m_n, s_n) over per-example (m_n, s = softplus(ρ_n) + 1e-5) with Adam.

    ``log_weight_fn(loc, scale, S)`` returns ``(S, B)`` differentiable log weights. One
    optimizer holds all examples; their parameters are independent, so each gets exactly
    its own ELBO's gradient. Only the local parameters receive gradients
    (``torch.autograd.grad``): nothing else's ``.grad`` is touched. Stopping rule (Cremer et
    al.): average the batch-mean ELBO over ``window`` steps; stop when ``patience``
    consecutive windows bring no improvement over the best, or after ``max_steps``;
    ``patience=None`` runs exactly ``max_steps`` steps and returns the last iterate; with
    the patience rule the result is the average of the last full window's iterates, which
    removes most of Adam's step noise around the optimum. Pyro's validation checks run on
    the first step only. Returns
    ``(loc, scale, steps, converged, window_means)``, detached.
    """
    _check_budget(max_steps=max_steps, patience=patience, window=window,
                  num_particles=num_particles)
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
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
    if patience is not None and avg_loc is not None:
        loc, raw = avg_loc, avg_raw
    return loc.detach(), (F.softplus(raw) + MIN_SCALE).detach(), step, converged, history


def _is_vae(obj) -> bool:
    return all(hasattr(obj, a) for a in ("model", "guide", "q", "z_dim"))


@contextlib.contextmanager
def _frozen(module):
    """Set ``requires_grad=False`` on every parameter of ``module``; restore it afterwards."""
    params = list(module.parameters()) if isinstance(module, torch.nn.Module) else []
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def encoder_moments(vae, x: torch.Tensor, num_samples: int = 256):
    """The amortized guide's location and scale for ``x``, each ``(B, z_dim)``.

    ``vae.q.encode(x)`` where the guide has it (the Normal encoder); else the mean and
    standard deviation of ``vae.q(x)``, or of ``num_samples`` draws when they have no
    closed form (flows).
    """
    if getattr(vae, "needs_index", False):
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
                z = q.sample((num_samples,))
                loc, scale = z.mean(0), z.std(0)
    return loc.detach(), scale.detach()


def _check_x(vae_or_model, x) -> None:
    if hasattr(vae_or_model, "check_data"):
        vae_or_model.check_data(x)
    elif not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise DataError(f"data must be a tensor of shape (batch, ...), got {type(x).__name__}")
    if x.shape[0] < 1:
        raise DataError("no examples: x has 0 rows")


def _model_and_args(vae_or_model, x, model_args: Sequence):
    if not _is_vae(vae_or_model):
        if not callable(vae_or_model):
            raise ConfigError(f"expected a VAE or a model function, got {type(vae_or_model)}")
        return vae_or_model, tuple(model_args)
    vae = vae_or_model
    if vae.needs_index:
        idx = torch.arange(x.shape[0], device=x.device)
        return (lambda x_: vae.model(x_, idx)), ()
    return vae.model, ()


def _z_dim(model, x, args) -> int:
    with torch.no_grad(), poutine.block():
        tr = poutine.trace(model).get_trace(x, *args)
    if "z" not in tr.nodes:
        raise ConfigError("the model has no latent site 'z'")
    return int(tr.nodes["z"]["fn"].event_shape[0])


def fit_local(vae_or_model, x: torch.Tensor, *, init="encoder", num_particles: int = 16,
              lr: float = 1e-2, max_steps: int = 5000, patience: int = 5, window: int = 50,
              elbo_samples: int = 1000, chunk_size: int | None = None, model_args: Sequence = (),
              progress: bool = True) -> LocalFit:
    """Fit q*(z_n) = N(m_n, diag s_n²) = argmax L[q] for every example of ``x``, decoder frozen.

    ``vae_or_model`` is a :class:`pvae.vae.VAE` or a model function ``model(x, *model_args)``
    with latent site ``"z"`` in the ``"data"`` plate. ``init`` is ``"encoder"`` (start from
    the amortized guide's moments), ``"prior"`` (start from N(0, I)) or a ``(loc, scale)``
    pair. The model's parameters get no gradient and are not changed. The loop is
    :func:`optimise_local` (Adam, ``num_particles`` reparameterised samples per example per
    step, the patience rule over windows of ``window`` steps); L[q*] is then estimated with
    ``elbo_samples`` samples per example.
    """
    _check_budget(max_steps=max_steps, patience=patience, window=window,
                  num_particles=num_particles, elbo_samples=elbo_samples)
    _check_x(vae_or_model, x)
    model, args = _model_and_args(vae_or_model, x, model_args)
    if isinstance(init, str) and init == "encoder":
        if not _is_vae(vae_or_model):
            raise ConfigError("init='encoder' needs a VAE (with an encoder); use init='prior'")
        loc0, scale0 = encoder_moments(vae_or_model, x)
    elif isinstance(init, str) and init == "prior":
        z_dim = vae_or_model.z_dim if _is_vae(vae_or_model) else _z_dim(model, x, args)
        loc0 = x.new_zeros(x.shape[0], z_dim)
        scale0 = torch.ones_like(loc0)
    elif isinstance(init, (tuple, list)) and len(init) == 2:
        loc0, scale0 = (t.detach().to(x) for t in init)
    else:
        raise ConfigError(f"init must be 'encoder', 'prior' or a (loc, scale) pair, got {init!r}")

    structure = _check_local_pair(model, loc0, scale0, x, args)

    def lw(loc, scale, s):
        return log_weights(model, local_guide(loc, scale), x, s, *args, chunk_size=chunk_size,
                           structure=structure)

    with _frozen(vae_or_model):
        start = time.perf_counter()
        loc, scale, steps, converged, history = optimise_local(
            lw, loc0, scale0, num_particles=num_particles, lr=lr, max_steps=max_steps,
            patience=patience, window=window, progress=progress)
        seconds = time.perf_counter() - start
        elbo = elbo_per_example(model, local_guide(loc, scale), x, elbo_samples, *args,
                                chunk_size=chunk_size, structure=structure)
    return LocalFit(loc, scale, elbo, steps, converged, tuple(history), seconds)


def refine(vae, x: torch.Tensor, steps: int = 5, lr: float = 1e-2, num_particles: int = 1,
           progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Semi-amortized inference (Kim et al. 2018): the encoder's (loc, scale) for ``x`` after
    exactly ``steps`` Adam steps on each example's ELBO, the decoder frozen."""
    _check_budget(steps=steps)
    _check_x(vae, x)
    model, args = _model_and_args(vae, x, ())
    loc0, scale0 = encoder_moments(vae, x)

    structure = _check_local_pair(model, loc0, scale0, x, args)

    def lw(loc, scale, s):
        return log_weights(model, local_guide(loc, scale), x, s, *args, structure=structure)

    with _frozen(vae):
        loc, scale, *_ = optimise_local(lw, loc0, scale0, num_particles=num_particles, lr=lr,
                                        max_steps=steps, patience=None, window=steps,
                                        progress=progress, desc="refine")
    return loc, scale


def refine_moments(prior, likelihood, x: torch.Tensor, loc0: torch.Tensor,
                   scale0: torch.Tensor, steps: int, lr: float, num_particles: int = 1):
    """``steps`` Adam steps on L_n = E_q[log p(z) + log p(x_n|z) − log q(z)] from (loc0, scale0).

    For use inside a guide: it calls the prior and likelihood modules directly (no Pyro
    sample sites, and their parameters are hidden from enclosing handlers by
    ``poutine.block``); only the local (loc, scale) get gradients. Returns them detached.
    """

    def lw(loc, scale, s):
        q = dist.Normal(loc, scale).to_event(1)
        z = q.rsample((s,))
        return prior().log_prob(z) + likelihood(z).log_prob(x) - q.log_prob(z)

    with poutine.block():
        loc, scale, *_ = optimise_local(lw, loc0, scale0, num_particles=num_particles, lr=lr,
                                        max_steps=steps, patience=None, window=steps)
    return loc, scale


def gap_report(vae, x: torch.Tensor, *, n: int | None = None, num_samples: int = 5000,
               elbo_samples: int = 1000, log_px_proposal: str = "mixture",
               chunk_size: int | None = None, progress: bool = True, **fit_kwargs) -> GapReport:
    """Measure log p(x), L[q*] and L[q] for the first ``n`` examples of ``x`` (all by default).

    log p(x) is importance-sampled with ``num_samples`` draws per example
    (:func:`pvae.evaluate.log_likelihood`) from the proposal named by ``log_px_proposal``:
    ``"amortized"`` (q), ``"local"`` (the fitted q*) or ``"mixture"`` (default), the
    defensive mixture ½q + ½q*. Its weights p(x, z)/(½q(z) + ½q*(z)) are at most twice
    those of either component, so its second moment is at most twice that of the better of
    q and q*, whichever that is for each example, while it stays a single estimator with
    E[p̂(x)] = p(x). Taking the per-example larger of two separate estimates instead would be
    biased upward by their noise. The estimate with q alone (the ``pvae evaluate`` number)
    is always reported too, as ``log_px_amortized``. L[q*] and L[q] use ``elbo_samples``
    draws each. ``fit_kwargs`` go to :func:`fit_local`.
    """
    from .evaluate import log_likelihood

    if not _is_vae(vae):
        raise ConfigError(f"gap_report needs a VAE, got {type(vae).__name__}")
    if vae.needs_index:
        raise ConfigError("the amortization gap needs an amortized guide; this VAE's guide owns "
                          "per-example parameters (train with --guide mlp)")
    if log_px_proposal not in ("mixture", "amortized", "local"):
        raise ConfigError(f"log_px_proposal must be 'mixture', 'amortized' or 'local', "
                          f"got {log_px_proposal!r}")
    _check_budget(num_samples=num_samples, elbo_samples=elbo_samples, n=n)
    if isinstance(x, torch.Tensor) and n is not None:
        if n > x.shape[0]:
            raise DataError(f"asked for {n} examples but the data have only {x.shape[0]}; "
                            f"use n <= {x.shape[0]}")
        x = x[:n]
    _check_x(vae, x)
    with torch.no_grad():
        start = time.perf_counter()
        vae.q(x)
        seconds_amortized = time.perf_counter() - start
    fit = fit_local(vae, x, elbo_samples=elbo_samples, chunk_size=chunk_size, progress=progress,
                    **fit_kwargs)
    idx = torch.arange(x.shape[0], device=x.device)
    proposal = {"amortized": vae.guide, "local": local_guide(fit.loc, fit.scale),
                "mixture": _mixture_guide(vae.q, fit.loc, fit.scale)}[log_px_proposal]
    with _frozen(vae):
        elbo_q = elbo_per_example(vae.model, vae.guide, x, elbo_samples, chunk_size=chunk_size)
        lp_q = log_likelihood(vae.model, vae.guide, x, num_samples, chunk_size)
        lp = lp_q if log_px_proposal == "amortized" else log_likelihood(
            lambda x_, idx_: vae.model(x_), proposal, x, num_samples, chunk_size, idx)
    return GapReport(log_px=lp.to(fit.elbo), log_px_proposal=log_px_proposal,
                     log_px_amortized=lp_q.to(fit.elbo), elbo_local=fit.elbo,
                     elbo_amortized=elbo_q, seconds_amortized=seconds_amortized,
                     seconds_local=fit.seconds, num_samples=num_samples,
                     elbo_samples=elbo_samples, local_steps=fit.steps,
                     local_converged=fit.converged)


class _HalfHalf(TorchDistribution):
    """The mixture ½a + ½b of two distributions with the same shapes, as an IS proposal.

    Draws are stratified: with a batch of two or more dims (particles at dim −2, examples
    at −1) they alternate a, b along the particle dim, so k draws hold ⌈k/2⌉ from a and
    ⌊k/2⌋ from b (deterministic-mixture importance sampling: unbiased for even k, and free
    of the binomial noise in how many draws come from each). Otherwise each draw picks a
    or b at random.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, a: dist.Distribution, b: dist.Distribution):
        self.a, self.b = a, b
        super().__init__(a.batch_shape, a.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return _HalfHalf(self.a.expand(batch_shape), self.b.expand(batch_shape))

    def sample(self, sample_shape=torch.Size()):
        za, zb = self.a.sample(sample_shape), self.b.sample(sample_shape)
        shape = za.shape[: za.dim() - len(self.event_shape)]
        if len(self.batch_shape) >= 2:
            k = shape[-2]
            pick = (torch.arange(k, device=za.device) % 2 == 0).unsqueeze(-1).expand(shape)
        else:
            pick = torch.rand(shape, device=za.device) < 0.5
        return torch.where(pick.reshape(pick.shape + (1,) * len(self.event_shape)), za, zb)

    def log_prob(self, value):
        return torch.logaddexp(self.a.log_prob(value), self.b.log_prob(value)) - math.log(2.0)


def _mixture_guide(q, loc: torch.Tensor, scale: torch.Tensor) -> Callable:
    """guide(x, idx): z_n ~ ½ q(z|x_n) + ½ N(loc_n, diag scale_n²) in the data plate."""

    def guide(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        local = dist.Normal(loc[idx], scale[idx]).to_event(1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", _HalfHalf(q(x), local))

    return guide
