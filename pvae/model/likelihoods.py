"""Likelihoods p(x|z): a decoder network and the observation distribution around it (the
interface: :class:`pvae.model.parts.Likelihood`), picked by name from :data:`LIKELIHOODS`.

Only the Bernoulli gives a discrete log-probability (log p(x) ≤ 0 nats); the continuous
likelihoods give a log-*density*, which depends on the units of x, can be positive and is not
comparable with Bernoulli numbers (nor across continuous likelihoods on differently scaled data)."""
import math
from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from ..distributions import BernoulliImage
from ..errors import ConfigError, DataError
from .nets import ConvDecoder, mlp


class _Decoded(nn.Module):
    """The decoder f: z → one parameter per pixel (an MLP, or with ``decoder="conv"`` a
    :class:`~pvae.model.nets.ConvDecoder`), and the support check of a subclass's ``_support``:
    (values outside it, its name, what it needs, the fix)."""

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
        """E[x|z] clipped to [0, 1], the image a figure shows: σ(f(z)) for the Bernoulli, f(z)
        for the Normal, the continuous Bernoulli's own mean (≠ λ)."""
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
    """p(x|z) = ∏_d Bernoulli(x_d; σ(f(z)_d)): log p(x|z) = Σ_d x_d f_d − softplus(f_d), a
    discrete log-likelihood of binary x."""

    data_kind = "binary"
    _support = (lambda x: (x != 0) & (x != 1), "Bernoulli", "binary data (0 or 1)",
               "binarize the images (pvae.data binarizes MNIST) or pick a likelihood for "
               "continuous data")

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return BernoulliImage(self.decoder(z))


class ContinuousBernoulli(_Decoded):
    """p(x|z) = ∏_d CB(x_d; λ_d), λ = σ(f(z)), for grayscale x ∈ [0, 1]: the continuous
    Bernoulli (Loaiza-Ganem & Cunningham, 2019) CB(x; λ) = C(λ) λ^x (1 − λ)^(1−x), whose
    normaliser C(λ) adds Σ_d log C(λ_d) to the Bernoulli log-likelihood of grayscale pixels."""

    data_kind = "continuous"
    _support = (lambda x: ~((x >= 0) & (x <= 1)), "continuous Bernoulli", "finite data in [0, 1]",
               "clean them or rescale the images to [0, 1], or use likelihood 'normal'")

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=self.decoder(z), validate_args=False).to_event(1)


class Normal(_Decoded):
    """p(x|z) = ∏_d N(x_d; f(z)_d, σ²), for real-valued x: σ is ``likelihood_scale`` or, with
    ``learn_scale``, one learned σ = 1e-3 + exp(s) starting there, shared by all pixels (per-pixel
    scales collapse on constant pixels, MNIST's borders, and send the density to infinity)."""

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
