"""The one form a loaded dataset takes, the checks it goes through, minibatches, synthetic data."""
import math
from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import DataError


UNLABELLED = -1
"""The training label of an example whose label was dropped (``--labelled N``)."""


@dataclass(frozen=True)
class Dataset:
    """Flattened float32 images (N, D) in [0, 1], ``test_x`` binarized once for a binary
    likelihood; int64 labels 0 … ``num_classes`` − 1 (:data:`UNLABELLED` where dropped), all 0
    and ``num_classes`` 0 where the data have none; ``image_shape`` is (H, W) or (D,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    image_shape: tuple[int, ...]
    num_classes: int = 0


def keep_labels(y: torch.Tensor, n: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """``y`` with ``n`` labels kept, balanced over the classes (⌊n/K⌋ each, one more for the
    first n mod K classes), drawn with ``seed``, the rest :data:`UNLABELLED`; DataError when a
    class has too few examples for its share."""
    counts = torch.bincount(y[y >= 0], minlength=num_classes)
    if n > int(counts.sum()):
        raise DataError(f"--labelled {n} asks for more labels than the {int(counts.sum())} "
                        "labelled training examples; lower it (or drop it to keep all)")
    if n == int(counts.sum()):
        return y.clone()
    gen, kept = torch.Generator().manual_seed(seed), torch.full_like(y, UNLABELLED)
    for c in range(num_classes):
        share = n // num_classes + (c < n % num_classes)
        if share > int(counts[c]):
            most = int(counts.min()) * num_classes
            raise DataError(f"--labelled {n} keeps {share} labels of class {c}, but the training "
                            f"set has only {int(counts[c])} of them; use --labelled {most} or "
                            "fewer (balanced), or drop it to keep every label")
        rows = torch.nonzero(y == c).flatten()
        chosen = rows[torch.randperm(rows.shape[0], generator=gen)[:share]]
        kept[chosen] = c
    return kept


def check_subset(name: str, n: int | None, total: int | None, source: str = "") -> None:
    """DataError unless ``n`` (the argument ``name``, e.g. ``train_subset``) is None or
    1 ≤ n ≤ ``total``."""
    if n is not None and int(n) < 1:
        raise DataError(f"{name} must be a positive number of examples, got {n}", name)
    if n is not None and total is not None and int(n) > total:
        raise DataError(f"{name} {n} is larger than the {total} examples available"
                        + (f" in {source}" if source else ""), name)


def binarize_once(x: torch.Tensor) -> torch.Tensor:
    """``x`` binarized once, x ~ Bernoulli(pixel) with seed 123: a test set of fixed images."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(123))


def minibatches(x: torch.Tensor, batch_size: int, generator: torch.Generator,
                binarize: bool = True, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(idx, x[idx])`` over one epoch permuted by ``generator``, binarized per batch if
    asked; with ``world_size`` W > 1, rank ``rank``'s share of each batch (docs/scaling.rst)."""
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
    """``n`` rows σ(A·tanh(Bz)), z ~ N(0, I), 0/1 if ``binary``; A, B depend on ``seed`` only."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(z_dim, 16, generator=g)
    A = 3.0 * torch.randn(16, x_dim, generator=g) / 4.0
    z = torch.randn(n, z_dim, generator=g)
    x = torch.sigmoid(torch.tanh(z @ B) @ A)
    return torch.bernoulli(x, generator=g) if binary else x
