"""Likelihoods p(x|z): a decoder network and the observation distribution around it.

Every likelihood is picked by name from :data:`LIKELIHOODS`. ``forward(z)`` returns a
distribution whose event shape is one flattened image; ``check(x)`` raises
:class:`~pvae.errors.DataError` if ``x`` lies outside the distribution's support.

Only the Bernoulli likelihood gives a discrete log-probability (log p(x) ≤ 0 nats).
The continuous likelihoods give a log-*density*: its value depends on the units of x,
can be positive, and is not comparable with Bernoulli numbers (nor across continuous
likelihoods on differently scaled data).

Option ``decoder`` picks the network f(z): ``"mlp"`` (default, widths ``hidden_dims``) or
``"conv"`` (:class:`pvae.nets.ConvDecoder`, for square images such as 28×28, with
``conv_channels``).
"""
from __future__ import annotations

import math
from typing import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.utils import broadcast_all

from .errors import ConfigError, DataError
from .nets import ConvDecoder, mlp

DECODERS = ("mlp", "conv")


def make_decoder(z_dim: int, x_dim: int, hidden_dims: Sequence[int], activation: str,
                 decoder: str = "mlp", conv_channels: int = 32) -> nn.Module:
    """The network f: z -> ``x_dim`` unconstrained values (an MLP or a transposed-conv net)."""
    if decoder == "mlp":
        return mlp(z_dim, hidden_dims, x_dim, activation)
    if decoder == "conv":
        return ConvDecoder(z_dim, hidden_dims, x_dim, activation, conv_channels)
    raise ConfigError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"the {name} likelihood needs finite data, got "
                        f"{int((~torch.isfinite(x)).sum())} NaN/Inf values; clean or drop them")


class _Decoded(nn.Module):
    """Holds the decoder f: z → the distribution's parameters, one per pixel (``decoder``
    is ``"mlp"`` or ``"conv"``); the likelihoods below say what distribution f(z) sets."""

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", *, decoder: str = "mlp", conv_channels: int = 32):
        super().__init__()
        self.x_dim = int(x_dim)
        self.decoder = make_decoder(z_dim, x_dim, hidden_dims, activation, decoder, conv_channels)


class BernoulliImage(dist.Independent):
    """Independent Bernoulli pixels with logits l as one event: ``Bernoulli(logits=l).to_event(1)``.

    ``log_prob(x) = −Σ_d BCE(l_d, x_d) = Σ_d x_d l_d − softplus(l_d)``, computed as
    ``binary_cross_entropy_with_logits(..., reduction="none").sum(-1).neg()``: the negation
    acts on the per-image sums instead of every pixel, which saves two passes over a
    batch × pixels tensor (forward and backward) per step. Same values as
    ``Bernoulli(logits=l).to_event(1).log_prob``.
    """

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        super().__init__(dist.Bernoulli(logits=logits, validate_args=False), 1,
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return BernoulliImage(self.base_dist.logits.expand(torch.Size(batch_shape) + self.event_shape),
                              validate_args=self._validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.base_dist.logits, value)
        return F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1).neg()


class Bernoulli(_Decoded):
    """p(x|z) = ∏_d Bernoulli(x_d; σ(f(z)_d)), parameterised by the logits f(z).

    ``log p(x|z) = Σ_d x_d f_d − softplus(f_d)``: a real discrete log-likelihood, so
    x must be binary (0 or 1).
    """

    data_kind = "binary"

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return BernoulliImage(self.decoder(z))

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] = σ(f(z)), the image a reconstruction figure shows."""
        return torch.sigmoid(self.decoder(z))

    @staticmethod
    def check(x: torch.Tensor) -> None:
        """Raise DataError unless every value of ``x`` is exactly 0 or 1."""
        if not bool(((x == 0) | (x == 1)).all()):
            bad = x[(x != 0) & (x != 1)].flatten()[:3].tolist()
            raise DataError(
                f"the Bernoulli likelihood needs binary data (0 or 1), got values such as {bad}; "
                "binarize the images (pvae.data binarizes MNIST) or pick a likelihood for "
                "continuous data"
            )


class ContinuousBernoulli(_Decoded):
    """p(x|z) = ∏_d CB(x_d; λ_d), λ = σ(f(z)), for grayscale x ∈ [0, 1].

    The continuous Bernoulli of Loaiza-Ganem & Cunningham (2019):
    CB(x; λ) = C(λ) λ^x (1 − λ)^(1−x) with the normaliser C(λ) that makes it a density
    on [0, 1], so ``log p(x|z)`` is the Bernoulli log-likelihood of grayscale pixels plus
    Σ_d log C(λ_d). It is a log-density (nats per unit pixel volume), not comparable with
    Bernoulli log-likelihoods on binarized data. E[x|z] ≠ λ; :meth:`mean` returns E[x|z].
    """

    data_kind = "continuous"

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=self.decoder(z), validate_args=False).to_event(1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] of the continuous Bernoulli, in [0, 1]."""
        return dist.ContinuousBernoulli(logits=self.decoder(z)).mean.clamp(0.0, 1.0)

    @staticmethod
    def check(x: torch.Tensor) -> None:
        """Raise DataError unless every value of ``x`` is finite and in [0, 1]."""
        _check_finite(x, "continuous Bernoulli")
        if not bool(((x >= 0) & (x <= 1)).all()):
            bad = x[(x < 0) | (x > 1)].flatten()[:3].tolist()
            raise DataError(f"the continuous Bernoulli likelihood needs data in [0, 1], got values "
                            f"such as {bad}; rescale the images to [0, 1] or use likelihood "
                            "'normal'")


class Normal(_Decoded):
    """p(x|z) = ∏_d N(x_d; f(z)_d, σ²), for real-valued x.

    σ is fixed at ``likelihood_scale`` (default 0.1, about a tenth of the [0, 1] pixel
    range) or, with ``learn_scale=True``, one learned scalar σ = 1e-3 + exp(s) initialised
    at ``likelihood_scale``. It is shared by all pixels because per-pixel scales collapse
    on pixels that are constant in the data (MNIST's borders), sending the density to
    infinity; the 1e-3 floor bounds it. ``log p(x|z)`` is a log-density: it is positive
    for small σ and not comparable with Bernoulli log-likelihoods.
    """

    data_kind = "continuous"
    MIN_SCALE = 1e-3

    def __init__(self, z_dim: int, x_dim: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh", *, decoder: str = "mlp", conv_channels: int = 32,
                 likelihood_scale: float = 0.1, learn_scale: bool = False):
        scale = float(likelihood_scale)
        if not scale > self.MIN_SCALE or not math.isfinite(scale):
            raise ConfigError(f"likelihood_scale must be a finite number > {self.MIN_SCALE}, "
                              f"got {likelihood_scale}")
        super().__init__(z_dim, x_dim, hidden_dims, activation, decoder=decoder,
                         conv_channels=conv_channels)
        self.learn_scale = bool(learn_scale)
        raw = torch.tensor(math.log(scale - self.MIN_SCALE))
        if self.learn_scale:
            self.log_scale = nn.Parameter(raw)
        else:
            self.register_buffer("log_scale", raw)

    @property
    def scale(self) -> torch.Tensor:
        """σ, the observation noise standard deviation (a 0-d tensor)."""
        return self.MIN_SCALE + self.log_scale.exp()

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        loc = self.decoder(z)
        return dist.Normal(loc, self.scale.expand_as(loc), validate_args=False).to_event(1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] = f(z), clipped to [0, 1] for display."""
        return self.decoder(z).clamp(0.0, 1.0)

    @staticmethod
    def check(x: torch.Tensor) -> None:
        """Raise DataError unless every value of ``x`` is finite."""
        _check_finite(x, "Normal")


LIKELIHOODS: dict[str, type[nn.Module]] = {
    "bernoulli": Bernoulli,
    "cbernoulli": ContinuousBernoulli,
    "normal": Normal,
}
