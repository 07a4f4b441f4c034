"""Guides q(z|x): amortized encoders that return a distribution over ``z`` per example.

Every guide is picked by name from :data:`GUIDES`. ``forward(x, idx)`` returns a
distribution with batch shape ``(B,)`` and event shape ``(z_dim,)``; ``idx`` holds the
dataset indices of the batch, which only non-amortized guides use.
"""
from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .localfit import refine_moments
from .errors import ConfigError
from .nets import ConvEncoder, Split, autoregressive_flow, inv_softplus, mlp

MIN_SCALE = 1e-5


class NormalEncoder(nn.Module):
    """q_φ(z|x) = N(μ_φ(x), diag σ_φ(x)²), with σ = softplus(·) + 1e-5 from one MLP."""

    amortized = True
    uses_model = False

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh"):
        super().__init__()
        self.z_dim = int(z_dim)
        self.net = Split(mlp(x_dim, hidden_dims, 2 * z_dim, activation), 2)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the location μ_φ(x) and scale σ_φ(x), each of shape ``(B, z_dim)``."""
        loc, raw = self.net(x)
        return loc, F.softplus(raw) + MIN_SCALE

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dist.Distribution:
        loc, scale = self.encode(x)
        return dist.Normal(loc, scale).to_event(1)


class ConvNormalEncoder(NormalEncoder):
    """q_φ(z|x) = N(μ_φ(x), diag σ_φ(x)²) from a convolutional encoder of the image.

    The flattened ``x`` is reshaped to one ``side×side`` channel (x_dim = 784 -> 28×28),
    passed through two stride-2 convolutions (``conv_channels``, default 32, then twice
    that) and an MLP head with ``hidden_dims``; see :class:`pvae.nets.ConvEncoder`.
    """

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", *, conv_channels: int = 32):
        nn.Module.__init__(self)
        self.z_dim = int(z_dim)
        body = ConvEncoder(x_dim, hidden_dims, 2 * self.z_dim, activation, conv_channels)
        self.net = Split(body, 2)


class LowRankEncoder(nn.Module):
    """q_φ(z|x) = N(μ_φ(x), F_φ(x) F_φ(x)ᵀ + diag d_φ(x)), F of shape (z_dim, ``rank``).

    A full-covariance Gaussian of rank ``rank`` (default 2) plus a diagonal, so the
    posterior can tilt: correlations between latents that the diagonal encoder ignores.
    d = (softplus(·) + 1e-5)². One MLP outputs μ, d and F.
    """

    amortized = True
    uses_model = False

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", *, rank: int = 2):
        super().__init__()
        if int(rank) < 1:
            raise ConfigError(f"rank must be >= 1, got {rank}")
        self.z_dim, self.rank = int(z_dim), int(rank)
        self.net = mlp(x_dim, hidden_dims, self.z_dim * (2 + self.rank), activation)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dist.Distribution:
        out = self.net(x)
        loc, raw, factor = out.split([self.z_dim, self.z_dim, self.z_dim * self.rank], dim=-1)
        factor = factor.reshape(*out.shape[:-1], self.z_dim, self.rank)
        diag = (F.softplus(raw) + MIN_SCALE) ** 2
        return dist.LowRankMultivariateNormal(loc, factor, diag)


class IAFEncoder(nn.Module):
    """q_φ(z|x): the Normal encoder's z₀ ~ N(μ_φ(x), diag σ_φ(x)²) followed by IAF steps.

    z = f_S(⋯ f_1(z₀)) with ``flow_steps`` (default 2) inverse autoregressive affine maps
    f_s(y)_i = m_s(y_<i) + exp(s_s(y_<i))·y_i (:func:`pvae.nets.autoregressive_flow`;
    widths ``flow_hidden``), and log q(z|x) = log N(z₀; μ, σ²) − Σ_s log-det-Jacobian(f_s).

    The flow is unconditional: its maps are shared by all x and do not see the encoder's
    context; the amortized base carries the dependence on x. Sampling is one pass per
    step and the log-density of the guide's own samples reuses the cached inverse, so
    ``Trace_ELBO`` costs one MADE pass per step. Because the maps do not depend on x,
    the log-density of any other z (e.g. inside a VampPrior, which mixes this guide at
    K pseudo-inputs) inverts the flow once for all K components.
    """

    amortized = True
    uses_model = False

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", *, flow_steps: int = 2,
                 flow_hidden: tuple[int, ...] = ()):
        super().__init__()
        self.z_dim = int(z_dim)
        self.base = NormalEncoder(z_dim=z_dim, x_dim=x_dim, hidden_dims=hidden_dims,
                                  activation=activation)
        self.flows = autoregressive_flow(self.z_dim, flow_steps, flow_hidden)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dist.Distribution:
        return dist.TransformedDistribution(self.base(x), list(self.flows))


class LocalGuide(nn.Module):
    """Non-amortized q(z_n) = N(m_n, diag softplus(ρ_n)²): free parameters per datapoint n.

    ``loc`` (m) and ``raw_scale`` (ρ) are ``(num_data, z_dim)`` parameters; ``forward(x, idx)``
    takes the rows ``idx`` (the ``"data"`` plate's subsample indices), so a batch's loss
    touches only its own rows and the plate scales it by N/B. Each q(z_n) starts at
    N(0, init_scale² I), the standard-normal prior for the default ``init_scale=1``. With
    no encoder it cannot infer z for new data: it is for fitting a fixed data set and for
    comparing with amortized inference (:mod:`pvae.amortization`).
    """

    amortized = False
    uses_model = False

    def __init__(self, z_dim: int, num_data: int | None = None, *, init_scale: float = 1.0):
        super().__init__()
        if num_data is None or int(num_data) < 1:
            raise ConfigError(f"the local guide owns one q(z_n) per datapoint and needs the data "
                              f"set size: pass num_data=N (the number of training examples), "
                              f"got {num_data!r}")
        if not float(init_scale) > 0:
            raise ConfigError(f"init_scale must be > 0, got {init_scale}")
        self.z_dim, self.num_data = int(z_dim), int(num_data)
        raw = inv_softplus(torch.tensor(float(init_scale) - MIN_SCALE).clamp_min(1e-4))
        self.loc = nn.Parameter(torch.zeros(self.num_data, self.z_dim))
        self.raw_scale = nn.Parameter(raw.expand(self.num_data, self.z_dim).clone())

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dist.Distribution:
        if idx is None:
            if x.shape[0] != self.num_data:
                raise ConfigError(f"the local guide needs the dataset indices of the batch: "
                                  f"pass idx (got {x.shape[0]} examples of {self.num_data})")
            idx = torch.arange(self.num_data, device=self.loc.device)
        return dist.Normal(self.loc[idx], F.softplus(self.raw_scale[idx]) + MIN_SCALE).to_event(1)


class SemiAmortizedGuide(nn.Module):
    """Semi-amortized q (Kim et al. 2018): N(μ_φ(x), σ_φ(x)) refined by SVI on each example.

    ``forward`` runs ``refine_steps`` Adam steps (rate ``refine_lr``, ``refine_particles``
    samples) on every example's ELBO E_q[log p(z) + log p(x|z) − log q(z)] with the decoder
    held fixed, starting from the encoder's output, and returns the refined N(μ_K, σ_K).
    The refinement is not differentiated through: the returned moments are
    μ_0 + stop_grad(μ_K − μ_0) (same for σ), so the decoder is trained on the refined
    posterior and the encoder gets the ELBO's gradient at (μ_K, σ_K) through its initial
    point, as if ∂μ_K/∂μ_0 = I. It needs the model's prior and likelihood: the VAE passes
    them with :meth:`bind`. ``refine_steps=0`` is the plain Normal encoder.
    """

    amortized = True
    uses_model = True

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", *, refine_steps: int = 5, refine_lr: float = 0.05,
                 refine_particles: int = 1):
        super().__init__()
        if int(refine_steps) < 0 or int(refine_particles) < 1 or not float(refine_lr) > 0:
            raise ConfigError(f"refine_steps must be >= 0, refine_particles >= 1 and refine_lr "
                              f"> 0, got {refine_steps}, {refine_particles}, {refine_lr}")
        self.z_dim = int(z_dim)
        self.refine_steps, self.refine_lr = int(refine_steps), float(refine_lr)
        self.refine_particles = int(refine_particles)
        self.encoder = NormalEncoder(z_dim=z_dim, x_dim=x_dim, hidden_dims=hidden_dims,
                                     activation=activation)
        self._model: tuple = ()

    def bind(self, prior: nn.Module, likelihood: nn.Module) -> None:
        """Give the refinement p(z) and p(x|z); kept outside the module tree (not submodules)."""
        self._model = (prior, likelihood)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unrefined encoder output (μ_φ(x), σ_φ(x))."""
        return self.encoder.encode(x)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dist.Distribution:
        loc0, scale0 = self.encoder.encode(x)
        if self.refine_steps == 0:
            return dist.Normal(loc0, scale0).to_event(1)
        if not self._model:
            raise ConfigError("the semi-amortized guide needs the model's prior and likelihood: "
                              "call guide.bind(prior, likelihood) (pvae.vae.VAE does)")
        loc, scale = refine_moments(*self._model, x, loc0, scale0, self.refine_steps,
                                    self.refine_lr, self.refine_particles)
        loc = loc0 + (loc - loc0).detach()
        scale = scale0 + (scale - scale0).detach()
        return dist.Normal(loc, scale).to_event(1)


GUIDES: dict[str, type[nn.Module]] = {
    "mlp": NormalEncoder,
    "conv": ConvNormalEncoder,
    "lowrank": LowRankEncoder,
    "iaf": IAFEncoder,
    "local": LocalGuide,
    "semi": SemiAmortizedGuide,
}
