"""Plain ``nn.Module`` builders the parts wrap: MLPs, the convolutional encoder/decoder, flows."""
from typing import Sequence

import torch
from torch import nn

from ..checks import check_count
from ..errors import ConfigError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int,
        activation: str = "tanh") -> nn.Sequential:
    """Affine layers ``in_dim -> hidden_dims... -> out_dim``, ``activation`` between them only."""
    act = _activation(activation)
    dims = [int(in_dim), *map(int, hidden_dims), int(out_dim)]
    layers = [m for a, b in zip(dims, dims[1:]) for m in (act(), nn.Linear(a, b))]
    return nn.Sequential(*layers[1:])


class Split(nn.Module):
    """Run ``body`` and split its last dimension into ``n`` equal chunks."""

    def __init__(self, body: nn.Module, n: int):
        super().__init__()
        self.body, self.n = body, n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.body(x).chunk(self.n, dim=-1)


def autoregressive_flow(dim: int, steps: int,
                        hidden_dims: Sequence[int] | None = None) -> nn.ModuleList:
    """A ``ModuleList`` of ``steps`` Pyro ``AffineAutoregressive`` maps y = μ(x) + exp(s(x))·x of
    MADE widths ``hidden_dims`` (each ≥ dim; empty: 3·dim + 1), orders alternately reversed."""
    from pyro.distributions.transforms import AffineAutoregressive
    from pyro.nn import AutoRegressiveNN

    dim, steps = int(dim), int(steps)
    if steps < 1:
        raise ConfigError(f"a flow needs at least one step, got flow_steps={steps}")
    hidden = [int(h) for h in hidden_dims] if hidden_dims else [3 * dim + 1]
    if any(h < dim for h in hidden):
        raise ConfigError(f"flow hidden widths must be >= the latent size {dim}, got {hidden}")
    order = torch.arange(dim)
    return nn.ModuleList(AffineAutoregressive(AutoRegressiveNN(
        dim, hidden, permutation=order.flip(0) if i % 2 else order)) for i in range(steps))


def image_side(x_dim: int) -> int:
    """The side s of a square one-channel image with s·s = ``x_dim`` pixels."""
    side = int(round(int(x_dim) ** 0.5))
    if side * side != int(x_dim):
        raise ConfigError(f"the convolutional nets need the image's height and width: x_dim="
                          f"{x_dim} is not a square number of pixels and no image_shape (H, W) "
                          "was given; pass one or use an MLP guide/decoder")
    return side


def image_hw(x_dim: int, image_shape: Sequence[int] | None = None) -> tuple[int, int]:
    """(H, W): ``image_shape`` if it has two sides, else :func:`image_side`'s square."""
    if image_shape is None or len(image_shape) != 2:
        return (image_side(x_dim),) * 2
    h, w = (int(v) for v in image_shape)
    if h * w != int(x_dim):
        raise ConfigError(f"image_shape {tuple(image_shape)} holds {h * w} pixels, not x_dim="
                          f"{x_dim}")
    return h, w


class ConvEncoder(nn.Module):
    """``(..., H·W)`` images, padded to sides divisible by 4 -> two stride-2 convolutions -> MLP."""

    def __init__(self, x_dim: int, hidden_dims: Sequence[int], out_dim: int,
                 activation: str = "tanh", channels: int = 32,
                 image_shape: Sequence[int] | None = None):
        super().__init__()
        c = check_count("conv_channels", channels)
        self.hw, act = image_hw(x_dim, image_shape), _activation(activation)
        self.pad = tuple(-s % 4 for s in self.hw)
        cells = ((self.hw[0] + self.pad[0]) // 4) * ((self.hw[1] + self.pad[1]) // 4)
        self.conv = nn.Sequential(nn.Conv2d(1, c, 4, 2, 1), act(),
                                  nn.Conv2d(c, 2 * c, 4, 2, 1), act(), nn.Flatten())
        self.head = mlp(2 * c * cells, hidden_dims, out_dim, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, 1, *self.hw)
        if any(self.pad):
            h = nn.functional.pad(h, (0, self.pad[1], 0, self.pad[0]))
        return self.head(self.conv(h)).reshape(*x.shape[:-1], -1)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: an MLP, two stride-2 transposed convolutions, a crop."""

    def __init__(self, z_dim: int, hidden_dims: Sequence[int], x_dim: int,
                 activation: str = "tanh", channels: int = 32,
                 image_shape: Sequence[int] | None = None):
        super().__init__()
        self.c = check_count("conv_channels", channels)
        self.hw, act = image_hw(x_dim, image_shape), _activation(activation)
        self.cells = tuple(-(-s // 4) for s in self.hw)
        self.head = nn.Sequential(mlp(z_dim, hidden_dims, 2 * self.c * self.cells[0]
                                      * self.cells[1], activation), act())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(2 * self.c, self.c, 4, 2, 1), act(),
                                    nn.ConvTranspose2d(self.c, 1, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z.reshape(-1, z.shape[-1])).reshape(-1, 2 * self.c, *self.cells)
        out = self.deconv(h)[..., :self.hw[0], :self.hw[1]]
        return out.reshape(*z.shape[:-1], self.hw[0] * self.hw[1])
