"""The one form a loaded dataset takes, and the checks every dataset goes through."""
from dataclasses import dataclass

import torch

from ..errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Flattened images as float32: ``train_x`` in [0, 1] of shape (N, D), ``test_x`` binarized
    once (seed 123) for a binary likelihood, else in [0, 1]; integer labels (0 where the data
    has none); ``image_shape`` is one example's shape, (H, W) or (D,)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    image_shape: tuple[int, ...]


def check_subset(flag: str, n: int | None, total: int | None, source: str = "") -> None:
    """DataError unless ``n`` (a ``--*-subset`` flag's value) is None or 1 ≤ n ≤ ``total``."""
    if n is not None and int(n) < 1:
        raise DataError(f"{flag} must be a positive number of examples, got {n}")
    if n is not None and total is not None and int(n) > total:
        raise DataError(f"{flag} {n} is larger than the {total} examples available"
                        + (f" in {source}" if source else ""))


def binarize_once(x: torch.Tensor) -> torch.Tensor:
    """``x`` binarized once, x ~ Bernoulli(pixel) with seed 123: a test set of fixed images."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(123))
