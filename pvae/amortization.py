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

Every ELBO here is the β = 1 bound on log p(x), from :func:`pvae.weights.log_weights`
(``scaled=False``): the sites' ``poutine.scale`` factors (β, N/B) and masks are not applied,
whatever the model was trained with. ``x`` moves to the device of the VAE (or of the module
whose method the model is) before any work; results live there.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import pyro.poutine as poutine
import torch

from .errors import ConfigError, DataError
from .evaluate import DEFAULT_CHUNK_SIZE, log_likelihood
from .localfit import check_budget, local_guide, mixture_guide, optimise_local
from .weights import Structure, check_pair, log_weights, to_model_device


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


def elbo_per_example(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int,
                     *args, chunk_size: int | None = None,
                     structure: Structure | None = None) -> torch.Tensor:
    """L[q] per example: the mean of log p(x, z) − log q(z|x) over ``num_samples`` z ~ q."""
    with torch.no_grad():
        return log_weights(model, guide, x, num_samples, *args,
                           chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                           structure=structure).mean(0).to(x.dtype)


def _local_objective(model: Callable, x: torch.Tensor, args: tuple, loc0: torch.Tensor,
                     scale0: torch.Tensor, chunk_size: int | None = None):
    """``(loc, scale, S) -> (S, B)`` log-weights and ``(loc, scale, S) -> (B,)`` ELBOs of the
    model with the local guide N(loc, diag scale²) on ``x``, the pair checked once.

    The examples' indices ride along after x, so a pass over some of the examples reads
    their rows of ``loc`` and ``scale``.
    """
    idx = torch.arange(x.shape[0], device=x.device)
    chunk = chunk_size or DEFAULT_CHUNK_SIZE

    def pair(loc, scale):
        guide = local_guide(loc, scale)
        return (lambda x_, i, *a: model(x_, *a)), (lambda x_, i, *a: guide(x_, i))

    structure = check_pair(*pair(loc0, scale0), x, idx, *args)

    def lw(loc, scale, s):
        return log_weights(*pair(loc, scale), x, s, idx, *args, chunk_size=chunk,
                           structure=structure).to(x.dtype)

    def elbo(loc, scale, s):
        return elbo_per_example(*pair(loc, scale), x, s, idx, *args, chunk_size=chunk,
                                structure=structure)

    return lw, elbo


def _is_vae(obj) -> bool:
    return all(hasattr(obj, a) for a in ("model", "guide", "q", "z_dim", "amortized"))


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
                z = q.sample((num_samples,))
                loc, scale = z.mean(0), z.std(0)
    return loc.detach(), scale.detach()


def _checked_x(vae_or_model, x, args: Sequence = ()) -> tuple[torch.Tensor, tuple]:
    """x (and the args cut with it) validated and moved to the model's device."""
    if hasattr(vae_or_model, "check_data"):
        vae_or_model.check_data(x)
    elif not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise DataError(f"data must be a tensor of shape (batch, ...), got {type(x).__name__}")
    if x.shape[0] < 1:
        raise DataError("no examples: x has 0 rows")
    model = vae_or_model.model if _is_vae(vae_or_model) else vae_or_model
    x, args, _ = to_model_device(model, x, *args)
    return x, args


def _model_and_args(vae_or_model, x, model_args: Sequence):
    if not _is_vae(vae_or_model):
        if not callable(vae_or_model):
            raise ConfigError(f"expected a VAE or a model function, got {type(vae_or_model)}")
        return vae_or_model, tuple(model_args)
    vae = vae_or_model
    if not vae.amortized:
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
    :func:`pvae.localfit.optimise_local` (Adam, ``num_particles`` reparameterised samples
    per example per step, the patience rule over windows of ``window`` steps); L[q*] is
    then estimated with ``elbo_samples`` samples per example. ``x``, the tensors of
    ``model_args`` cut with it and the fit live on the model's device.
    """
    check_budget(max_steps=max_steps, patience=patience, window=window,
                 num_particles=num_particles, elbo_samples=elbo_samples)
    x, model_args = _checked_x(vae_or_model, x, model_args)
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
    lw, elbo_of = _local_objective(model, x, args, loc0, scale0, chunk_size)
    with _frozen(vae_or_model):
        start = time.perf_counter()
        loc, scale, steps, converged, history = optimise_local(
            lw, loc0, scale0, num_particles=num_particles, lr=lr, max_steps=max_steps,
            patience=patience, window=window, progress=progress)
        seconds = time.perf_counter() - start
        elbo = elbo_of(loc, scale, elbo_samples)
    return LocalFit(loc, scale, elbo, steps, converged, tuple(history), seconds)


def refine(vae, x: torch.Tensor, steps: int = 5, lr: float = 1e-2, num_particles: int = 1,
           progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Semi-amortized inference (Kim et al. 2018): the encoder's (loc, scale) for ``x`` after
    exactly ``steps`` Adam steps on each example's ELBO, the decoder frozen; on the VAE's device."""
    check_budget(steps=steps)
    x, _ = _checked_x(vae, x)
    model, args = _model_and_args(vae, x, ())
    loc0, scale0 = encoder_moments(vae, x)
    lw, _ = _local_objective(model, x, args, loc0, scale0)
    with _frozen(vae):
        loc, scale, *_ = optimise_local(lw, loc0, scale0, num_particles=num_particles, lr=lr,
                                        max_steps=steps, patience=None, window=steps,
                                        progress=progress, desc="refine")
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
    draws each. ``fit_kwargs`` go to :func:`fit_local`. The report lives on the VAE's device.
    """
    if not _is_vae(vae):
        raise ConfigError(f"gap_report needs a VAE, got {type(vae).__name__}")
    if not vae.amortized:
        raise ConfigError("the amortization gap needs an amortized guide; this VAE's guide owns "
                          "per-example parameters (train with --guide mlp)")
    if log_px_proposal not in ("mixture", "amortized", "local"):
        raise ConfigError(f"log_px_proposal must be 'mixture', 'amortized' or 'local', "
                          f"got {log_px_proposal!r}")
    check_budget(num_samples=num_samples, elbo_samples=elbo_samples, n=n)
    if isinstance(x, torch.Tensor) and n is not None:
        if n > x.shape[0]:
            raise DataError(f"asked for {n} examples but the data have only {x.shape[0]}; "
                            f"use n <= {x.shape[0]}")
        x = x[:n]
    x, _ = _checked_x(vae, x)
    with torch.no_grad():
        start = time.perf_counter()
        vae.q(x)
        seconds_amortized = time.perf_counter() - start
    fit = fit_local(vae, x, elbo_samples=elbo_samples, chunk_size=chunk_size, progress=progress,
                    **fit_kwargs)
    idx = torch.arange(x.shape[0], device=x.device)
    proposal = {"amortized": vae.guide, "local": local_guide(fit.loc, fit.scale),
                "mixture": mixture_guide(vae.q, fit.loc, fit.scale)}[log_px_proposal]
    with _frozen(vae):
        elbo_q = elbo_per_example(vae.model, vae.guide, x, elbo_samples, chunk_size=chunk_size)
        lp_q = log_likelihood(vae.model, vae.guide, x, num_samples=num_samples,
                              chunk_size=chunk_size)
        lp = lp_q if log_px_proposal == "amortized" else log_likelihood(
            lambda x_, idx_: vae.model(x_), proposal, x, idx, num_samples=num_samples,
            chunk_size=chunk_size)
    return GapReport(log_px=lp.to(fit.elbo), log_px_proposal=log_px_proposal,
                     log_px_amortized=lp_q.to(fit.elbo), elbo_local=fit.elbo,
                     elbo_amortized=elbo_q, seconds_amortized=seconds_amortized,
                     seconds_local=fit.seconds, num_samples=num_samples,
                     elbo_samples=elbo_samples, local_steps=fit.steps,
                     local_converged=fit.converged)
