"""Guides q(z|x), picked by name from :data:`GUIDES`; every scale is softplus(·) + 1e-5."""
from typing import Sequence

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_count
from ..distributions import MIN_SCALE, inv_softplus
from ..errors import ConfigError
from ..infer.localfit import optimise_local
from .nets import ConvEncoder, Split, autoregressive_flow, mlp


class _Guide(nn.Module):
    """The :class:`pvae.model.parts.Guide` flags of most guides: amortized, not using the model."""

    amortized = True
    uses_model = False


class NormalEncoder(_Guide):
    """q_φ(z|x) = N(μ_φ(x), diag σ_φ(x)²), μ and σ from one MLP."""

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
        return dist.Normal(*self.encode(x)).to_event(1)


class ConvNormalEncoder(NormalEncoder):
    """The Normal encoder with a :class:`~pvae.model.nets.ConvEncoder` for the MLP."""

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", image_shape: Sequence[int] | None = None, *,
                 conv_channels: int = 32):
        nn.Module.__init__(self)
        self.z_dim = int(z_dim)
        self.net = Split(ConvEncoder(x_dim, hidden_dims, 2 * self.z_dim, activation,
                                     conv_channels, image_shape), 2)


class LowRankEncoder(_Guide):
    """q_φ(z|x) = N(μ_φ(x), F_φ(x) F_φ(x)ᵀ + diag d_φ(x)), F of shape (z_dim, ``rank``)."""

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", *, rank: int = 2):
        super().__init__()
        self.z_dim, self.rank = int(z_dim), check_count("rank", rank)
        self.net = mlp(x_dim, hidden_dims, self.z_dim * (2 + self.rank), activation)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dist.Distribution:
        out = self.net(x)
        loc, raw, factor = out.split([self.z_dim, self.z_dim, self.z_dim * self.rank], dim=-1)
        factor = factor.reshape(*out.shape[:-1], self.z_dim, self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, (F.softplus(raw) + MIN_SCALE) ** 2)


class IAFEncoder(_Guide):
    """q_φ(z|x): z₀ ~ N(μ_φ(x), diag σ_φ(x)²), z = f_S(⋯ f_1(z₀)) by ``flow_steps`` autoregressive
    maps shared by all x: log q(z|x) = log N(z₀; μ, σ²) − Σ_s log-det-Jacobian(f_s)."""

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", *, flow_steps: int = 2,
                 flow_hidden: tuple[int, ...] = ()):
        super().__init__()
        self.z_dim = int(z_dim)
        self.base = NormalEncoder(z_dim, x_dim, hidden_dims, activation)
        self.flows = autoregressive_flow(self.z_dim, flow_steps, flow_hidden)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dist.Distribution:
        return dist.TransformedDistribution(self.base(x), list(self.flows))


class LocalGuide(_Guide):
    """Non-amortized q(z_n) = N(m_n, diag softplus(ρ_n)²), starting at N(0, init_scale² I):
    ``loc`` (m) and ``raw_scale`` (ρ) are ``(num_data, z_dim)``; a batch reads its rows ``idx``."""

    amortized = False

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


class SemiAmortizedGuide(_Guide):
    """Semi-amortized q: N(μ_K, σ_K) after ``refine_steps`` Adam steps on each example's ELBO
    from the encoder's (μ_0, σ_0); it needs :meth:`bind` (docs/amortization.rst)."""

    uses_model = True

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", *, refine_steps: int = 5, refine_lr: float = 0.05,
                 refine_particles: int = 1):
        super().__init__()
        if int(refine_steps) < 0 or int(refine_particles) < 1 or not float(refine_lr) > 0:
            raise ConfigError(f"refine_steps must be >= 0, refine_particles >= 1 and refine_lr "
                              f"> 0, got {refine_steps}, {refine_particles}, {refine_lr}")
        self.z_dim, self.refine_steps = int(z_dim), int(refine_steps)
        self.refine_lr, self.refine_particles = float(refine_lr), int(refine_particles)
        self.encoder = NormalEncoder(z_dim, x_dim, hidden_dims, activation)
        self._model: tuple = ()

    def bind(self, prior: nn.Module, likelihood: nn.Module) -> None:
        """Give the refinement p(z) and p(x|z); kept outside the module tree (not submodules)."""
        self._model = (prior, likelihood)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unrefined encoder output (μ_φ(x), σ_φ(x))."""
        return self.encoder.encode(x)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> dist.Distribution:
        loc0, scale0 = self.encode(x)
        if self.refine_steps == 0:
            return dist.Normal(loc0, scale0).to_event(1)
        if not self._model:
            raise ConfigError("the semi-amortized guide needs the model's prior and likelihood: "
                              "call guide.bind(prior, likelihood) (pvae.VAE does)")
        prior, likelihood = self._model

        def log_weight(loc, scale, s):  # no Pyro sites: a guide cannot run the model
            q = dist.Normal(loc, scale).to_event(1)
            z = q.rsample((s,))
            return prior().log_prob(z) + likelihood(z).log_prob(x) - q.log_prob(z)

        with poutine.block():  # the modules' parameters stay out of the guide's trace
            loc, scale, *_ = optimise_local(log_weight, loc0, scale0, lr=self.refine_lr,
                                            num_particles=self.refine_particles,
                                            max_steps=self.refine_steps, patience=None,
                                            window=self.refine_steps)
        loc = loc0 + (loc - loc0).detach()
        return dist.Normal(loc, scale0 + (scale - scale0).detach()).to_event(1)


GUIDES: dict[str, type[nn.Module]] = {
    "mlp": NormalEncoder, "conv": ConvNormalEncoder, "lowrank": LowRankEncoder,
    "iaf": IAFEncoder, "local": LocalGuide, "semi": SemiAmortizedGuide}
