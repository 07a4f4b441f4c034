"""What inference may ask of the owner of a model/guide pair (a VAE), passed as ``host=vae``: a
:class:`Host` lends its device, data checks and parameters, an :class:`Encoder` its encoder."""
import contextlib
from typing import Callable, Iterator, Protocol, runtime_checkable

import torch

from ..errors import DataError

LABELS = "y"
"""The keyword of the labels a host checks with the data (the label site's name)."""


@runtime_checkable
class Host(Protocol):
    """The owner of a model/guide pair: where its parameters live, how it checks data."""

    @property
    def device(self) -> torch.device: ...

    def check_data(self, x: torch.Tensor) -> None: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...


@runtime_checkable
class Encoder(Host, Protocol):
    """A host with its Pyro pair ``model``/``guide`` and a guide that may be ``amortized``:
    ``q(x)`` is q(z|x) and ``encode(x)`` is ``(loc, scale, flows)`` with q(z|x) =
    f(N(loc, diag scale²)), f the composition of ``flows``; ``z_dim`` the latent size."""

    z_dim: int
    amortized: bool
    q: Callable
    model: Callable
    guide: Callable

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]: ...


def map_examples(fn: Callable, x: torch.Tensor, *args, **kwargs
                 ) -> tuple[torch.Tensor, tuple, dict]:
    """``fn`` of ``x`` and of every tensor in ``args``/``kwargs`` whose leading dim is len(x)."""
    n = x.shape[0]

    def each(a):
        return fn(a) if isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == n else a

    return fn(x), tuple(each(a) for a in args), {k: each(v) for k, v in kwargs.items()}


def prepare_examples(host: Host | None, x: torch.Tensor, *args, **kwargs
                     ) -> tuple[torch.Tensor, tuple, dict]:
    """``x`` and the tensors cut with it, on ``host``'s device and checked by it (if given; with
    labels ``y=``, ``host.check_data(x, y=y)``); DataError unless x is a tensor of one or more
    examples along dim 0."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"x must be a torch.Tensor with the examples along dim 0, "
                        f"got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise DataError(f"x must have the examples along its leading dim and at least one "
                        f"example, got shape {tuple(x.shape)}")
    if host is None:
        return x, args, kwargs
    host.check_data(x, **{k: v for k, v in kwargs.items() if k == LABELS and v is not None})
    return map_examples(lambda a: a.to(host.device), x, *args, **kwargs)


@contextlib.contextmanager
def frozen_parameters(host: Host | None):
    """Within the block the trainable parameters of ``host`` (if any) take no gradients."""
    params = [p for p in host.parameters() if p.requires_grad] if host is not None else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
