"""Plain ``nn.Module`` builders: MLPs and the small convolutional encoder/decoder.

Nothing here knows about distributions; priors, likelihoods and guides wrap these.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str = "tanh") -> nn.Sequential:
    """Affine layers ``in_dim -> hidden_dims... -> out_dim`` with ``activation`` between them.

    The output layer is affine (no activation), so callers map it to logits, locations
    or log-scales themselves.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    dims = [int(in_dim), *[int(h) for h in hidden_dims], int(out_dim)]
    if any(d < 1 for d in dims):
        raise ValueError(f"layer widths must be positive, got {dims}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Split(nn.Module):
    """Run ``body`` and split its last dimension into ``n`` equal chunks."""

    def __init__(self, body: nn.Module, n: int):
        super().__init__()
        self.body = body
        self.n = n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.body(x).chunk(self.n, dim=-1)


def inv_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y, for y > 0: y + log(1 − e^(−y)), stable for large and small y."""
    return y + torch.log(-torch.expm1(-y))


def autoregressive_flow(dim: int, steps: int,
                        hidden_dims: Sequence[int] | None = None) -> nn.ModuleList:
    """``steps`` Pyro ``AffineAutoregressive`` maps y = μ(x) + exp(s(x))·x on ``dim`` variables.

    Each step's MADE network has hidden widths ``hidden_dims`` (None or empty: ``[3·dim + 1]``;
    every width must be ≥ dim). Variable orders alternate between the identity and its
    reverse, so consecutive steps condition in opposite directions; the orders are fixed,
    not random, so two builds with the same seed are identical. The maps are returned as
    an ``nn.ModuleList`` so their parameters are registered (and trained) by the owner.
    """
    from pyro.distributions.transforms import AffineAutoregressive
    from pyro.nn import AutoRegressiveNN

    dim, steps = int(dim), int(steps)
    if steps < 1:
        raise ConfigError(f"a flow needs at least one step, got flow_steps={steps}")
    hidden = [int(h) for h in hidden_dims] if hidden_dims else [3 * dim + 1]
    if any(h < dim for h in hidden):
        raise ConfigError(f"flow hidden widths must be >= the latent size {dim}, got {hidden}")
    order = torch.arange(dim)
    maps = []
    for i in range(steps):
        perm = order if i % 2 == 0 else order.flip(0)
        maps.append(AffineAutoregressive(AutoRegressiveNN(dim, hidden, permutation=perm)))
    return nn.ModuleList(maps)


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def image_side(x_dim: int) -> int:
    """The side s of a square one-channel image with s·s = ``x_dim`` pixels, s divisible by 4."""
    side = int(round(int(x_dim) ** 0.5))
    if side * side != int(x_dim) or side % 4:
        raise ConfigError(f"the convolutional nets need square images whose side is divisible by 4 "
                          f"(e.g. x_dim=784 for 28x28), got x_dim={x_dim}; use an MLP "
                          "guide/decoder")
    return side


class ConvEncoder(nn.Module):
    """Flattened ``side·side`` images -> two stride-2 4×4 convolutions -> an MLP head.

    Channels ``channels`` then ``2·channels``; the spatial size halves twice (28 -> 14 -> 7).
    Accepts any leading batch shape ``(..., side·side)`` and returns ``(..., out_dim)``.
    """

    def __init__(self, x_dim: int, hidden_dims: Sequence[int], out_dim: int,
                 activation: str = "tanh", channels: int = 32):
        super().__init__()
        self.side = image_side(x_dim)
        c = int(channels)
        act = _activation(activation)
        self.conv = nn.Sequential(nn.Conv2d(1, c, 4, 2, 1), act(),
                                  nn.Conv2d(c, 2 * c, 4, 2, 1), act(), nn.Flatten())
        self.head = mlp(2 * c * (self.side // 4) ** 2, hidden_dims, out_dim, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = self.conv(x.reshape(-1, 1, self.side, self.side))
        return self.head(h).reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """z -> an MLP -> ``2·channels`` maps of size side/4 -> two stride-2 transposed convolutions.

    The mirror of :class:`ConvEncoder`; returns ``(..., side·side)`` unconstrained values
    (logits or locations) for any leading batch shape of ``z``.
    """

    def __init__(self, z_dim: int, hidden_dims: Sequence[int], x_dim: int,
                 activation: str = "tanh", channels: int = 32):
        super().__init__()
        self.side = image_side(x_dim)
        c = int(channels)
        self.c, self.s4 = c, self.side // 4
        act = _activation(activation)
        self.head = nn.Sequential(mlp(z_dim, hidden_dims, 2 * c * self.s4 ** 2, activation), act())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(2 * c, c, 4, 2, 1), act(),
                                    nn.ConvTranspose2d(c, 1, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.head(z.reshape(-1, z.shape[-1])).reshape(-1, 2 * self.c, self.s4, self.s4)
        return self.deconv(h).reshape(*lead, self.side * self.side)
