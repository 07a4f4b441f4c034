"""The upper stochastic layer of the two-layer VAE (Burda et al., 2016; docs/training.rst)."""
from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from .guides import NormalEncoder

TOP_SITE = "z2"


class UpperLayer(nn.Module):
    """p(z|z2) = N(μ_θ(z2), diag σ_θ(z2)²), q(z2|z) = N(μ_φ(z), diag σ_φ(z)²), from MLPs."""

    def __init__(self, z_dim: int, top_z_dim: int = 50, hidden_dims: Sequence[int] = (100, 100),
                 activation: str = "tanh"):
        super().__init__()
        self.z_dim, self.top_z_dim = int(z_dim), int(top_z_dim)
        self.p = NormalEncoder(self.z_dim, self.top_z_dim, hidden_dims, activation)
        self.q = NormalEncoder(self.top_z_dim, self.z_dim, hidden_dims, activation)

    def conditional(self, z2: torch.Tensor) -> dist.Distribution:
        """p(z|z2), batch shape that of ``z2`` without its last dim, event ``(z_dim,)``."""
        return self.p(z2)

    def posterior(self, z: torch.Tensor) -> dist.Distribution:
        """q(z2|z), batch shape that of ``z`` without its last dim, event ``(top_z_dim,)``."""
        return self.q(z)
