"""Plain ``nn.Module`` builders: MLPs, the small convolutional encoder/decoder, flow maps.

Nothing here knows about distributions; priors, likelihoods and guides wrap these."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int,
        activation: str = "tanh") -> nn.Sequential:
    """Affine layers ``in_dim -> hidden_dims... -> out_dim``, ``activation`` between them only."""
    act = _activation(activation)
    dims = [int(in_dim), *[int(h) for h in hidden_dims], int(out_dim)]
    layers: list[nn.Module] = [nn.Linear(dims[0], dims[1])]
    for a, b in zip(dims[1:-1], dims[2:]):
        layers += [act(), nn.Linear(a, b)]
    return nn.Sequential(*layers)


class Split(nn.Module):
    """Run ``body`` and split its last dimension into ``n`` equal chunks."""

    def __init__(self, body: nn.Module, n: int):
        super().__init__()
        self.body, self.n = body, n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.body(x).chunk(self.n, dim=-1)


def inv_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y, for y > 0: y + log(1 − e^(−y)), stable for large and small y."""
    return y + torch.log(-torch.expm1(-y))


def autoregressive_flow(dim: int, steps: int,
                        hidden_dims: Sequence[int] | None = None) -> nn.ModuleList:
    """``steps`` Pyro ``AffineAutoregressive`` maps y = μ(x) + exp(s(x))·x on ``dim`` variables,
    in a ``ModuleList`` so the owner registers them. MADE widths ``hidden_dims`` (each ≥ dim;
    empty: ``[3·dim + 1]``); variable orders alternate identity/reverse (fixed, not random)."""
    from pyro.distributions.transforms import AffineAutoregressive
    from pyro.nn import AutoRegressiveNN

    dim, steps = int(dim), int(steps)
    if steps < 1:
        raise ConfigError(f"a flow needs at least one step, got flow_steps={steps}")
    hidden = [int(h) for h in hidden_dims] if hidden_dims else [3 * dim + 1]
    if any(h < dim for h in hidden):
        raise ConfigError(f"flow hidden widths must be >= the latent size {dim}, got {hidden}")
    order = torch.arange(dim)
    orders = [order if i % 2 == 0 else order.flip(0) for i in range(steps)]
    return nn.ModuleList(AffineAutoregressive(AutoRegressiveNN(dim, hidden, permutation=perm))
                         for perm in orders)


def image_side(x_dim: int) -> int:
    """The side s of a square one-channel image with s·s = ``x_dim`` pixels, s divisible by 4."""
    side = int(round(int(x_dim) ** 0.5))
    if side * side != int(x_dim) or side % 4:
        raise ConfigError(f"the convolutional nets need square images whose side is divisible by 4 "
                          f"(e.g. x_dim=784 for 28x28), got x_dim={x_dim}; use an MLP "
                          "guide/decoder")
    return side


class ConvEncoder(nn.Module):
    """``(..., side·side)`` images -> two stride-2 4×4 convolutions (``channels``, then twice
    that; 28 -> 14 -> 7) -> an MLP head -> ``(..., out_dim)``."""

    def __init__(self, x_dim: int, hidden_dims: Sequence[int], out_dim: int,
                 activation: str = "tanh", channels: int = 32):
        super().__init__()
        self.side, c, act = image_side(x_dim), int(channels), _activation(activation)
        self.conv = nn.Sequential(nn.Conv2d(1, c, 4, 2, 1), act(),
                                  nn.Conv2d(c, 2 * c, 4, 2, 1), act(), nn.Flatten())
        self.head = mlp(2 * c * (self.side // 4) ** 2, hidden_dims, out_dim, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.reshape(-1, 1, self.side, self.side))
        return self.head(h).reshape(*x.shape[:-1], -1)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: z -> an MLP -> ``2·channels`` maps of side/4 -> two
    stride-2 transposed convolutions -> ``(..., side·side)`` unconstrained values."""

    def __init__(self, z_dim: int, hidden_dims: Sequence[int], x_dim: int,
                 activation: str = "tanh", channels: int = 32):
        super().__init__()
        self.side, self.c, act = image_side(x_dim), int(channels), _activation(activation)
        self.s4 = self.side // 4
        self.head = nn.Sequential(mlp(z_dim, hidden_dims, 2 * self.c * self.s4 ** 2, activation),
                                  act())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(2 * self.c, self.c, 4, 2, 1), act(),
                                    nn.ConvTranspose2d(self.c, 1, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z.reshape(-1, z.shape[-1])).reshape(-1, 2 * self.c, self.s4, self.s4)
        return self.deconv(h).reshape(*z.shape[:-1], self.side * self.side)
