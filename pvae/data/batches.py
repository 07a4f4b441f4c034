"""Minibatches of one shuffled epoch (binarized afresh per batch), and synthetic data."""
import math
from typing import Iterator

import torch


def minibatches(x: torch.Tensor, batch_size: int, generator: torch.Generator,
                binarize: bool = True, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(idx, x[idx])`` over one epoch permuted by ``generator``, ``x[idx]`` binarized per
    batch if asked; with ``world_size`` W > 1 the rank ``rank``'s share of each global batch
    (torch's DistributedSampler order, see the scaling page of the docs)."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator)
    if world_size > 1:
        perm = perm.repeat(math.ceil((n + world_size - 1) / n))[:math.ceil(n / world_size)
                                                                 * world_size]
        perm, batch_size = perm[rank::world_size], batch_size // world_size
    perm = perm.to(x.device)
    for start in range(0, perm.shape[0], batch_size):
        idx = perm[start:start + batch_size]
        xb = x.index_select(0, idx)
        yield idx, (torch.bernoulli(xb) if binarize else xb)


def synthetic(n: int, x_dim: int = 784, z_dim: int = 2, seed: int = 0,
              binary: bool = True) -> torch.Tensor:
    """``n`` examples x = σ(A·tanh(Bz)), z ~ N(0, I), in (0, 1), one Bernoulli draw per pixel
    if ``binary``: quick data for tests; A, B depend on ``seed`` only, not on ``n``."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(z_dim, 16, generator=g)
    A = 3.0 * torch.randn(16, x_dim, generator=g) / 4.0
    z = torch.randn(n, z_dim, generator=g)
    x = torch.sigmoid(torch.tanh(z @ B) @ A)
    return torch.bernoulli(x, generator=g) if binary else x
