"""The linear-Gaussian VAE: p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I), with exact answers.

log p(x) = log N(x; b, WWᵀ + σ²I); the posterior is N(m, Σ) with
Σ = (I + WᵀW/σ²)⁻¹ and m = Σ Wᵀ(x − b)/σ²; the optimal diagonal (mean-field) Gaussian has
mean m and variance 1/diag(Σ⁻¹).
"""
from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pvae.model.priors import StandardNormal
from pvae.model.vae import VAE


class LinearGaussianLikelihood(nn.Module):
    """p(x|z) = N(Wz + b, σ²I) with fixed W, b, σ."""

    data_kind = "continuous"

    def __init__(self, W: torch.Tensor, b: torch.Tensor, sigma: float):
        super().__init__()
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.sigma = float(sigma)

    def forward(self, z):
        return dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1)

    def mean(self, z):
        return z @ self.W.T + self.b

    @staticmethod
    def check(x):
        return None


def posterior(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, sigma: float):
    """Exact posterior mean (B, z) and covariance (z, z) of p(z|x)."""
    precision = torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / sigma**2
    cov = torch.linalg.inv(precision)
    mean = (x - b) @ W @ cov.T / sigma**2
    return mean, cov


def exact_log_px(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x; b, WWᵀ + σ²I), one value per row of x."""
    cov = W @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=W.dtype)
    return dist.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


class ExactPosteriorGuide(nn.Module):
    """q(z|x) = p(z|x), the exact full-covariance posterior."""

    amortized = True
    uses_model = False

    def __init__(self, W, b, sigma):
        super().__init__()
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.sigma = float(sigma)
        self.z_dim = W.shape[1]

    def forward(self, x, idx=None):
        mean, cov = posterior(x, self.W, self.b, self.sigma)
        return dist.MultivariateNormal(mean, scale_tril=torch.linalg.cholesky(cov))


class ShiftedDiagonalGuide(nn.Module):
    """A deliberately worse guide: the posterior mean shifted by ``shift`` with the
    posterior's marginal standard deviations times ``widen``, diagonal."""

    amortized = True
    uses_model = False

    def __init__(self, W, b, sigma, shift: float = 0.5, widen: float = 1.5):
        super().__init__()
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.sigma, self.shift, self.widen = float(sigma), float(shift), float(widen)
        self.z_dim = W.shape[1]

    def forward(self, x, idx=None):
        mean, cov = posterior(x, self.W, self.b, self.sigma)
        sd = cov.diagonal().sqrt() * self.widen
        return dist.Normal(mean + self.shift, sd.expand_as(mean)).to_event(1)


def make_problem(z_dim: int = 2, x_dim: int = 5, sigma: float = 0.5, seed: int = 0,
                 dtype=torch.float64):
    """Return W, b, σ for a random linear-Gaussian VAE (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(x_dim, z_dim, generator=g, dtype=dtype)
    b = torch.randn(x_dim, generator=g, dtype=dtype)
    return W, b, sigma


def make_vae(W, b, sigma, guide: nn.Module | None = None) -> VAE:
    """A :class:`pvae.VAE` with the linear-Gaussian model and ``guide`` (exact posterior by default)."""
    prior = StandardNormal(W.shape[1]).to(W.dtype)
    lik = LinearGaussianLikelihood(W, b, sigma)
    q = guide if guide is not None else ExactPosteriorGuide(W, b, sigma)
    return VAE(prior, lik, q, x_dim=W.shape[0])


def sample_data(W, b, sigma, n: int, seed: int = 1) -> torch.Tensor:
    """n draws of x from the linear-Gaussian model."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, W.shape[1], generator=g, dtype=W.dtype)
    return z @ W.T + b + sigma * torch.randn(n, W.shape[0], generator=g, dtype=W.dtype)
