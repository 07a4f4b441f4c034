"""Distributions the parts and the estimators share; every learned σ is softplus(ρ) + MIN_SCALE."""
import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all

MIN_SCALE = 1e-5


def inv_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y, for y > 0: y + log(1 − e^(−y)), stable for large and small y."""
    return y + torch.log(-torch.expm1(-y))


class BernoulliImage(dist.Independent):
    """``Bernoulli(logits=l).to_event(1)``, its ``log_prob`` in fewer passes (benchmarks/README)."""

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        super().__init__(dist.Bernoulli(logits=logits, validate_args=False), 1,
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        logits = self.base_dist.logits.expand(torch.Size(batch_shape) + self.event_shape)
        return BernoulliImage(logits, validate_args=self._validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.base_dist.logits, value)
        return F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1).neg()


class DiagonalNormalMixture(dist.MixtureSameFamily):
    """p(z) = Σ_k π_k N(z; μ_k, diag σ_k²) whose ``log_prob`` never holds (…, K, z_dim): with
    a_k = 1/σ_k², b_k = μ_k/σ_k², c_k = Σ_d (μ_kd² a_kd + 2 log σ_kd + log 2π), log N(z; μ_k, σ_k)
    = −½ (z²·a_k − 2 z·b_k + c_k), two float64 matrix products: M latents cost M × K memory."""

    def __init__(self, logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor,
                 validate_args: bool | None = None):
        super().__init__(dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1),
                         validate_args=validate_args)
        self._params = (logits, locs, scales)

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, _instance or type(self).__new__(type(self)))
        new._params = self._params
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits, locs, scales = self._params
        v, loc, scale = value.double(), locs.double(), scales.double()
        a = scale.pow(-2)
        c = (loc.pow(2) * a + 2 * scale.log()).sum(-1) + loc.shape[-1] * math.log(2 * math.pi)
        quad = v.pow(2) @ a.transpose(-1, -2) - 2 * v @ (loc * a).transpose(-1, -2) + c
        lp = torch.logsumexp(torch.log_softmax(logits.double(), -1) - 0.5 * quad, dim=-1)
        return lp.to(value.dtype).expand(value.shape[:-1])


class EvenMixture(TorchDistribution):
    """½a + ½b of two same-shaped distributions as an IS proposal: draws alternate a, b along
    particles at dim −2 (stratified, unbiased for even k), else each picks a or b at random."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, a: dist.Distribution, b: dist.Distribution):
        self.a, self.b = a, b
        super().__init__(a.batch_shape, a.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return EvenMixture(self.a.expand(batch_shape), self.b.expand(batch_shape))

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


def shared_flows(q: dist.Distribution) -> list:
    """The transforms f of a guide's ``TransformedDistribution(q0(z0|x), f)`` when every one is
    a parameter-holding ``TransformModule`` (the same map for all x, as in the IAF guide), else
    []: a mixture of such q is then f of the mixture of the q0 (why: docs/training.rst)."""
    if not isinstance(q, dist.TransformedDistribution):
        return []
    flows = list(q.transforms)
    return flows if all(isinstance(t, dist.TransformModule) for t in flows) else []
