"""Likelihoods p(x|z), picked by name from :data:`LIKELIHOODS` (docs/swapping.rst)."""
import math
from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from ..distributions import BernoulliImage
from ..errors import ConfigError, DataError
from .nets import ConvDecoder, mlp


class _Decoded(nn.Module):
    """The decoder f: z → one parameter per pixel (an MLP, or a ConvDecoder), and the check of a
    subclass's ``_support``: (values outside it, its name, what it needs, the fix)."""

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", image_shape: Sequence[int] | None = None, *,
                 decoder: str = "mlp", conv_channels: int = 32):
        super().__init__()
        if decoder not in ("mlp", "conv"):
            raise ConfigError(f"unknown decoder {decoder!r}; choose one of: mlp, conv")
        self.decoder = (mlp(z_dim, hidden_dims, x_dim, activation) if decoder == "mlp" else
                        ConvDecoder(z_dim, hidden_dims, x_dim, activation, conv_channels,
                                    image_shape))

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] clipped to [0, 1], the image a figure shows."""
        return self(z).mean.clamp(0.0, 1.0)

    @classmethod
    def check(cls, x: torch.Tensor) -> None:
        """Raise DataError unless every value of ``x`` is in the likelihood's support."""
        outside, name, need, fix = cls._support
        bad = outside(x)
        if bool(bad.any()):
            raise DataError(f"the {name} likelihood needs {need}, got values such as "
                            f"{x[bad].flatten()[:3].tolist()}; {fix}")


class Bernoulli(_Decoded):
    """p(x|z) = ∏_d Bernoulli(x_d; σ(f(z)_d)): log p(x|z) = Σ_d x_d f_d − softplus(f_d)."""

    data_kind = "binary"
    _support = (lambda x: (x != 0) & (x != 1), "Bernoulli", "binary data (0 or 1)",
               "binarize the images (pvae.data binarizes MNIST) or pick a likelihood for "
               "continuous data")

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return BernoulliImage(self.decoder(z))


class ContinuousBernoulli(_Decoded):
    """p(x|z) = ∏_d CB(x_d; λ_d), λ = σ(f(z)), where CB(x; λ) = C(λ) λ^x (1 − λ)^(1−x)."""

    data_kind = "continuous"
    _support = (lambda x: ~((x >= 0) & (x <= 1)), "continuous Bernoulli", "finite data in [0, 1]",
               "clean them or rescale the images to [0, 1], or use likelihood 'normal'")

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=self.decoder(z), validate_args=False).to_event(1)


class Normal(_Decoded):
    """p(x|z) = ∏_d N(x_d; f(z)_d, σ²), σ = ``likelihood_scale`` or, with ``learn_scale``, 1e-3 +
    exp(s), shared by all pixels (per-pixel σ would collapse on constant pixels: density → ∞)."""

    data_kind = "continuous"
    _support = (lambda x: ~torch.isfinite(x), "Normal", "finite data", "clean or drop them")
    SIGMA_FLOOR = 1e-3

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", image_shape: Sequence[int] | None = None, *,
                 decoder: str = "mlp", conv_channels: int = 32, likelihood_scale: float = 0.1,
                 learn_scale: bool = False):
        scale = float(likelihood_scale)
        if not scale > self.SIGMA_FLOOR or not math.isfinite(scale):
            raise ConfigError(f"likelihood_scale must be a finite number > {self.SIGMA_FLOOR}, "
                              f"got {likelihood_scale}")
        super().__init__(z_dim, x_dim, hidden_dims, activation, image_shape, decoder=decoder,
                         conv_channels=conv_channels)
        raw = torch.tensor(math.log(scale - self.SIGMA_FLOOR))
        if learn_scale:
            self.log_scale = nn.Parameter(raw)
        else:
            self.register_buffer("log_scale", raw)

    @property
    def scale(self) -> torch.Tensor:
        """σ, the observation noise standard deviation (a 0-d tensor)."""
        return self.SIGMA_FLOOR + self.log_scale.exp()

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        loc = self.decoder(z)
        return dist.Normal(loc, self.scale.expand_as(loc), validate_args=False).to_event(1)


LIKELIHOODS: dict[str, type[nn.Module]] = {
    "bernoulli": Bernoulli, "cbernoulli": ContinuousBernoulli, "normal": Normal}
