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


@runtime_checkable
class Program(Host, Protocol):
    """A host whose pair ``model``/``guide`` has a plain twin when ``plain_program`` is True:
    ``plain_sites(x, idx, latent_scale=..., values=...)`` returns the (guide, model)
    :class:`~pvae.infer.sites.Site` s the pair traces, computed without Pyro."""

    model: Callable
    guide: Callable
    plain_program: bool

    def plain_sites(self, x: torch.Tensor, idx: torch.Tensor | None = None, *,
                    latent_scale, particles: int | None = None,
                    values: dict | None = None) -> tuple[list, list]: ...


def plain_twin(host: Host | None, model: Callable, guide: Callable, call: tuple
               ) -> Program | None:
    """``host`` when it is a :class:`Program` whose plain twin computes ``model``/``guide`` on
    ``call`` = (x, args, kwargs) (its own pair, x and at most the indices), else None."""
    _, args, kwargs = call
    if not isinstance(host, Program) or not host.plain_program or kwargs or len(args) > 1:
        return None
    return host if model == host.model and guide == host.guide else None


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


class HostCopy:
    """A copy of a tensor to the host, started now and read by :meth:`numpy` later: on CUDA a
    non-blocking copy into pinned memory and an event, so the device's queue never drains."""

    def __init__(self, t: torch.Tensor):
        self.event = None
        self.value = t.detach().to("cpu", non_blocking=True)
        if t.device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(t.device))

    def numpy(self):
        """The values, once the copy is done (it waits on the copy alone)."""
        if self.event is not None:
            self.event.synchronize()
        return self.value.numpy()


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
