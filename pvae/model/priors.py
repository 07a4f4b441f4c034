"""Priors p(z) (:class:`pvae.model.parts.Prior`), picked by name from :data:`PRIORS`."""
import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_count
from ..distributions import DiagonalNormalMixture, shared_flows
from ..errors import ConfigError
from .nets import autoregressive_flow


class StandardNormal(nn.Module):
    """p(z) = N(0, I); its location and scale are buffers, so they follow the module's device."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = int(z_dim)
        self.register_buffer("loc", torch.zeros(self.z_dim))
        self.register_buffer("scale", torch.ones(self.z_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class LearnedNormal(nn.Module):
    """p(z) = N(μ, diag exp(2·s)), learned μ and log-scale s starting at 0 (N(0, I))."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = int(z_dim)
        self.loc = nn.Parameter(torch.zeros(self.z_dim))
        self.log_scale = nn.Parameter(torch.zeros(self.z_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


class MixturePrior(nn.Module):
    """p(z) = Σ_k π_k N(z; μ_k, diag σ_k²), K = ``num_components``, π = softmax(logits) (init
    uniform), μ_k ~ N(0, I) at first (the components start apart), σ_k = softplus(ρ_k) + 1e-5."""

    def __init__(self, z_dim: int, *, num_components: int = 10):
        super().__init__()
        k = check_count("num_components", num_components)
        self.z_dim = int(z_dim)
        self.logits = nn.Parameter(torch.zeros(k))
        self.locs = nn.Parameter(torch.randn(k, self.z_dim))
        self.raw_scales = nn.Parameter(torch.full((k, self.z_dim), math.log(math.e - 1.0)))

    def forward(self) -> dist.Distribution:
        return DiagonalNormalMixture(self.logits, self.locs, F.softplus(self.raw_scales) + 1e-5)


EDGE_MARGIN = 0.01


class VampPrior(nn.Module):
    """The VampPrior (Tomczak & Welling, 2018): p(z) = (1/K) Σ_k q(z | u_k) at K learned u_k =
    hardtanh(a), a ~ N(0.05, 0.01²) at first, as in the paper (a sigmoid froze the u_k near blank
    images: test ELBO −158 against −129 after 10 MNIST epochs); unbounded, u = a ~ N(0, 0.01²)."""

    def __init__(self, z_dim: int, x_dim: int, guide: nn.Module | None = None, *,
                 num_pseudo_inputs: int = 500, bounded_pseudo_inputs: bool = True):
        super().__init__()
        if guide is None:
            raise ConfigError("the VampPrior needs the encoder: build it with "
                              "build_vae(prior='vamp', ...) or pass guide=<the guide module>")
        if not guide.amortized or guide.uses_model:
            why = ("a per-datapoint guide has none" if not guide.amortized else
                   f"{type(guide).__name__} itself uses the prior, which would recurse")
            raise ConfigError(f"the VampPrior evaluates an encoder q(z|x) at its pseudo-inputs and "
                              f"{why}: use guide mlp, conv, lowrank or iaf with prior 'vamp'")
        k = check_count("num_pseudo_inputs", num_pseudo_inputs)
        self.z_dim, self.bounded = int(z_dim), bool(bounded_pseudo_inputs)
        object.__setattr__(self, "encoder", guide)
        init = (0.05 if self.bounded else 0.0) + 0.01 * torch.randn(k, int(x_dim))
        self.raw_pseudo_inputs = nn.Parameter(init)

    @torch.no_grad()
    def start_at(self, images: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the K pseudo-inputs to K distinct rows of ``images`` (values in [0, 1]) drawn with
        ``generator``; bounded ones clamped to [m, 1 − m], m = ``EDGE_MARGIN``, as hardtanh's
        gradient is zero at 0 and 1 (where 81 % of MNIST's training pixels are)."""
        k, d = self.raw_pseudo_inputs.shape
        if images.dim() != 2 or images.shape[0] < k or images.shape[1] != d:
            raise ConfigError(f"starting {k} pseudo-inputs at training images needs at least "
                              f"{k} images of {d} values, got shape {tuple(images.shape)}; use "
                              "fewer pseudo-inputs")
        rows = torch.randperm(images.shape[0], generator=generator)[:k]
        start = images[rows].to(self.raw_pseudo_inputs)
        if self.bounded:
            start = start.clamp(EDGE_MARGIN, 1.0 - EDGE_MARGIN)
        self.raw_pseudo_inputs.copy_(start)

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs u_k, shape ``(K, x_dim)``."""
        raw = self.raw_pseudo_inputs
        return F.hardtanh(raw, 0.0, 1.0) if self.bounded else raw

    def forward(self) -> dist.Distribution:
        components = self.encoder(self.pseudo_inputs)
        logits = self.raw_pseudo_inputs.new_zeros(self.raw_pseudo_inputs.shape[0])
        if flows := shared_flows(components):
            components = components.base_dist
        base = getattr(components, "base_dist", None)
        if isinstance(base, dist.Normal) and components.reinterpreted_batch_ndims == 1:
            mixture = DiagonalNormalMixture(logits, base.loc, base.scale)
        else:
            mixture = dist.MixtureSameFamily(dist.Categorical(logits=logits), components)
        return dist.TransformedDistribution(mixture, flows) if flows else mixture


class FlowPrior(StandardNormal):
    """A MAF prior: u = f_S(⋯ f_1(z)) ~ N(0, I), log p(z) = log N(u; 0, I) + Σ_s log|det J_s|."""

    def __init__(self, z_dim: int, *, flow_steps: int = 2, flow_hidden: tuple[int, ...] = ()):
        super().__init__(z_dim)
        self.flows = autoregressive_flow(self.z_dim, flow_steps, flow_hidden)

    def forward(self) -> dist.Distribution:
        return dist.TransformedDistribution(super().forward(),
                                            [f.inv for f in reversed(self.flows)])


PRIORS: dict[str, type[nn.Module]] = {
    "standard": StandardNormal, "learned": LearnedNormal, "mog": MixturePrior, "vamp": VampPrior,
    "flow": FlowPrior}
