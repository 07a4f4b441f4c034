"""Non-amortized and semi-amortized inference, and the amortization-gap report.

For a trained model p(x, z) and its amortized guide q_φ(z|x), the gap between log p(x) and
the ELBO L[q] = E_q[log p(x, z) − log q(z|x)] splits in two (Cremer, Li & Duvenaud 2018):

    log p(x) − L[q] = (log p(x) − L[q*]) + (L[q*] − L[q])
                       approximation gap    amortization gap

where q* is the best member of the guide's own family for this one x, fitted per example
with the decoder frozen (:func:`fit_local`): a diagonal Gaussian, or for a guide whose flow
f is shared by all x (the IAF guide) f applied to a diagonal Gaussian, the family q(z|x)
itself chooses from, so that L[q] ≤ L[q*] up to the fit; :func:`refine` and
:class:`pvae.guides.SemiAmortizedGuide` sit in
between (Kim et al. 2018). Every ELBO here is the β = 1 bound; ``x`` moves to the model's
device (:func:`pvae.weights.prepare_examples`) and results live there."""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Sequence

import pyro.poutine as poutine
import torch

from .errors import ConfigError, DataError
from .evaluate import DEFAULT_CHUNK_SIZE, log_likelihood
from .localfit import local_guide, optimise_local
from .priors import shared_flows
from .weights import check_count, check_pair, log_weights, prepare_examples


FAMILIES = {"normal": "diagonal Normal", "flow": "the guide's flow of a diagonal Normal"}


@dataclass(frozen=True)
class LocalFit:
    """q*(z_n) = N(loc_n, diag scale_n²) (``family`` "flow": pushed through the guide's shared
    flow) and L[q*] for each of B examples, and the steps, convergence, window means
    (:func:`pvae.localfit.optimise_local`) and wall time of the fit."""

    loc: torch.Tensor
    scale: torch.Tensor
    elbo: torch.Tensor
    steps: int
    converged: bool
    history: tuple[float, ...]
    seconds: float
    family: str = "normal"


@dataclass(frozen=True)
class GapReport:
    """Per-example log p(x) (with ``log_px_proposal``, see :func:`gap_report`; and with q
    alone, ``log_px_amortized``), L[q*] and L[q] in nats for n examples, and the two gaps."""

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
    local_family: str = "normal"

    @property
    def n(self) -> int:
        """Number of examples."""
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
        """Means over the examples, each with its standard error (None if n < 2)."""
        out: dict = {"n": self.n}
        for key in ("log_px", "elbo_local", "elbo_amortized", "approximation_gap",
                    "amortization_gap", "inference_gap", "log_px_amortized"):
            v = getattr(self, key).detach().double()
            se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else None
            out[key], out[f"{key}_stderr"] = float(v.mean()), se
        out.update(seconds_per_example_amortized=self.seconds_amortized / self.n,
                   seconds_per_example_local=self.seconds_local / self.n,
                   log_px_proposal=self.log_px_proposal, num_samples=self.num_samples,
                   elbo_samples=self.elbo_samples, local_steps=self.local_steps,
                   local_converged=self.local_converged, local_family=self.local_family,
                   local_family_description=FAMILIES[self.local_family])
        return out


def _is_vae(obj) -> bool:
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
    if not (_is_vae(vae) and vae.amortized):
        return []
    with torch.no_grad():
        return shared_flows(vae.q(x[:1]))


def _optimised(vae_or_model, x, init, model_args: Sequence, chunk_size, **options):
    """The local guide's float64 log-weights function, :func:`optimise_local`'s results, its
    wall time and the flows of its family."""
    vae = vae_or_model if _is_vae(vae_or_model) else None
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
    chunk = chunk_size or DEFAULT_CHUNK_SIZE

    def pair(loc, scale):  # idx rides along after x: a pass reads its examples' rows
        guide = local_guide(loc, scale, flows=flows)
        return (lambda x_, i, *a: model(x_, *a)), (lambda x_, i, *a: guide(x_, i))

    structure = check_pair(*pair(loc0, scale0), x, idx, *args)

    def lw(loc, scale, s):
        return log_weights(*pair(loc, scale), x, s, idx, *args, chunk_size=chunk,
                           structure=structure)

    frozen = [p for p in vae_or_model.parameters() if p.requires_grad] \
        if isinstance(vae_or_model, torch.nn.Module) else []
    for p in frozen:  # the model's parameters are left alone, and cost no gradients
        p.requires_grad_(False)
    try:
        start = time.perf_counter()
        fitted = optimise_local(lambda *a: lw(*a).to(x.dtype), loc0, scale0, **options)
    finally:
        for p in frozen:
            p.requires_grad_(True)
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
    ``(loc, scale)``; the options: :func:`pvae.localfit.optimise_local`'s."""
    check_count("elbo_samples", elbo_samples)
    check_count("chunk_size", chunk_size, allow_none=True)
    lw, (loc, scale, steps, converged, history), seconds, flows = _optimised(
        vae_or_model, x, init, model_args, chunk_size, num_particles=num_particles, lr=lr,
        max_steps=max_steps, patience=patience, window=window, progress=progress,
        max_seconds=max_seconds)
    with torch.no_grad():
        elbo = lw(loc, scale, elbo_samples).mean(0).to(x.dtype)
    return LocalFit(loc, scale, elbo, steps, converged, tuple(history), seconds,
                    "flow" if flows else "normal")


def refine(vae, x: torch.Tensor, steps: int = 5, lr: float = 1e-2, num_particles: int = 1,
           progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Semi-amortized inference (Kim et al. 2018): the encoder's (loc, scale) for ``x`` after
    exactly ``steps`` Adam steps on each example's ELBO, the decoder frozen; on the VAE's device
    (for a guide with a shared flow, the (loc, scale) of its base, :func:`fit_local`'s family)."""
    check_count("steps", steps)
    _, (loc, scale, *_), _, _ = _optimised(
        vae, x, "encoder", (), None, num_particles=num_particles, lr=lr, max_steps=steps,
        patience=None, window=steps, progress=progress, desc="refine")
    return loc, scale


def gap_report(vae, x: torch.Tensor, *, n: int | None = None, num_samples: int = 5000,
               elbo_samples: int = 1000, log_px_proposal: str = "mixture",
               chunk_size: int | None = None, progress: bool = True, **fit_kwargs) -> GapReport:
    """log p(x), L[q*] and L[q] for the first ``n`` examples of ``x`` (all by default).

    log p(x) takes ``num_samples`` draws from ``log_px_proposal``: ``"amortized"`` q,
    ``"local"`` q*, or ``"mixture"`` ½q + ½q*, whose weights are at most twice either one's
    while E[p̂(x)] = p(x) (the larger of two estimates would be biased up); ``log_px_amortized``
    is always q's. L[q*] and L[q] take ``elbo_samples`` draws; ``fit_kwargs`` go to
    :func:`fit_local`."""
    if not _is_vae(vae):
        raise ConfigError(f"gap_report needs a VAE, got {type(vae).__name__}")
    if not vae.amortized:
        raise ConfigError("the amortization gap needs an amortized guide; this VAE's guide owns "
                          "per-example parameters (train with --guide mlp)")
    if getattr(vae, "upper", None) is not None:
        raise ConfigError("the amortization gap is implemented for one stochastic layer; this "
                          "VAE has two (its local q* would need q(z2|z) as well)")
    if log_px_proposal not in ("mixture", "amortized", "local"):
        raise ConfigError(f"log_px_proposal must be 'mixture', 'amortized' or 'local', "
                          f"got {log_px_proposal!r}")
    check_count("num_samples", num_samples)
    check_count("n", n, allow_none=True)
    x, _, _ = prepare_examples(vae.model, x)
    if n is not None and n > x.shape[0]:
        raise DataError(f"asked for {n} examples but the data have only {x.shape[0]}; "
                        f"use n <= {x.shape[0]}")
    x = x[:n]
    with torch.no_grad():
        start = time.perf_counter()
        vae.q(x)
        seconds_amortized = time.perf_counter() - start
    fit = fit_local(vae, x, elbo_samples=elbo_samples, chunk_size=chunk_size, progress=progress,
                    **fit_kwargs)
    with torch.no_grad():
        elbo_q = log_weights(vae.model, vae.guide, x, elbo_samples,
                             chunk_size=chunk_size or DEFAULT_CHUNK_SIZE).mean(0).to(x.dtype)
    lp_q = log_likelihood(vae.model, vae.guide, x, num_samples=num_samples, chunk_size=chunk_size)
    flows = guide_flows(vae, x) if fit.family == "flow" else []
    proposal = {"local": local_guide(fit.loc, fit.scale, flows=flows),
                "mixture": local_guide(fit.loc, fit.scale, vae.q, flows)}.get(log_px_proposal)
    lp = lp_q if proposal is None else log_likelihood(
        lambda x_, idx_: vae.model(x_), proposal, x, torch.arange(x.shape[0], device=x.device),
        num_samples=num_samples, chunk_size=chunk_size)
    return GapReport(log_px=lp.to(fit.elbo), log_px_proposal=log_px_proposal,
                     log_px_amortized=lp_q.to(fit.elbo), elbo_local=fit.elbo,
                     elbo_amortized=elbo_q, seconds_amortized=seconds_amortized,
                     seconds_local=fit.seconds, num_samples=num_samples,
                     elbo_samples=elbo_samples, local_steps=fit.steps,
                     local_converged=fit.converged, local_family=fit.family)
