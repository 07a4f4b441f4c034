"""What a VAE accepts as data: a finite ``(B, x_dim)`` tensor in its likelihood's support, or
training data to binarize in [0, 1]; one :class:`~pvae.errors.DataError` naming the fix."""
import math
from typing import Sequence

import torch

from ..errors import DataError


def check_examples(x: torch.Tensor, x_dim: int, image_shape: Sequence[int] | None, likelihood,
                   probabilities: bool = False) -> None:
    """DataError unless ``x`` is a finite ``(B, x_dim)`` tensor that ``likelihood.check``
    accepts, or with ``probabilities`` (training data to binarize) one of values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"data must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != x_dim:
        values = math.prod(x.shape[1:]) if x.dim() > 1 else 0
        built = (f"{'×'.join(map(str, image_shape))} images ({x_dim} values)" if image_shape
                 else f"{x_dim} values per example")
        fix = ("flatten each image with x.reshape(len(x), -1)" if values == x_dim else
               f"the model was built for {built} and these data have {values} values per "
               "example: give data of the model's size, or a model built for these")
        raise DataError(f"data must have shape (batch, {x_dim}) (flattened examples), "
                        f"got {tuple(x.shape)}; {fix}")
    if probabilities:
        lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
        if lo != lo or hi != hi:
            raise DataError("data contains NaN values; clean or drop those examples")
        if lo < 0 or hi > 1:
            raise DataError(f"training data must lie in [0, 1] to be binarized (Bernoulli "
                            f"probabilities), got values in [{lo:g}, {hi:g}]; rescale the "
                            "images, e.g. x / 255")
    elif not bool(torch.isfinite(x).all()):
        raise DataError(f"data contains {int((~torch.isfinite(x)).sum())} NaN/Inf values; "
                        "clean or drop those examples")
    else:
        likelihood.check(x)
