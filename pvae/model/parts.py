"""What a prior, a likelihood and a guide must provide, and how their options are routed."""
import difflib
import inspect
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from pyro.distributions import Distribution

from ..checks import coerce_option
from ..errors import ConfigError

SHARED = ("z_dim", "x_dim", "hidden_dims", "activation", "num_data", "image_shape", "guide")
"""Constructor arguments that are not options: the VAE's sizes, and the guide for a prior."""


@runtime_checkable
class Prior(Protocol):
    """p(z): ``prior()`` returns a distribution with event shape ``(z_dim,)`` and no batch shape."""

    z_dim: int

    def __call__(self) -> Distribution: ...


@runtime_checkable
class Likelihood(Protocol):
    """p(x|z): ``likelihood(z)`` returns a distribution whose event is one flattened example;
    ``data_kind`` is ``"binary"`` (the data are binarized) or ``"continuous"``; ``check(x)``
    raises DataError outside the support; ``mean(z)`` is E[x|z], the image a figure shows."""

    data_kind: str

    def __call__(self, z: torch.Tensor) -> Distribution: ...
    def mean(self, z: torch.Tensor) -> torch.Tensor: ...
    def check(self, x: torch.Tensor) -> None: ...


@runtime_checkable
class Guide(Protocol):
    """q(z|x): ``guide(x, idx)`` returns a distribution with batch ``(B,)``, event ``(z_dim,)``;
    ``amortized`` is False for one q(z_n) per training example, read at the dataset indices
    ``idx``; ``uses_model`` is True for a guide that needs ``bind(prior, likelihood)``."""

    amortized: bool
    uses_model: bool

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> Distribution: ...


def declared_options(cls: type) -> dict[str, Any]:
    """``{option: default}``: the keyword-only parameters of ``cls``'s constructor."""
    params = inspect.signature(cls).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def shared_arguments(cls: type) -> tuple[str, ...]:
    """The names in :data:`SHARED` that ``cls``'s constructor takes."""
    params = inspect.signature(cls).parameters
    return tuple(name for name in SHARED if name in params
                 and params[name].kind is not inspect.Parameter.KEYWORD_ONLY)


def split_options(parts: Mapping[str, tuple[str, type]],
                  options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Route each option to every part of ``{role: (name, class)}`` that declares it, coerced
    to its declared type; ConfigError naming an undeclared one and the closest valid one."""
    declared = {role: declared_options(cls) for role, (_, cls) in parts.items()}
    routed: dict[str, dict[str, Any]] = {role: {} for role in parts}
    valid = sorted(options_taken(parts))
    for key, value in options.items():
        owners = [role for role, opts in declared.items() if key in opts]
        if not owners:
            chosen = ", ".join(f"{role} {name!r}" for role, (name, _) in parts.items())
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown option {key!r}{hint} for {chosen}; their options are: "
                              f"{', '.join(valid) or 'none'}")
        for role in owners:
            routed[role][key] = coerce_option(key, value, declared[role][key])
    return routed


def options_taken(parts: Mapping[str, tuple[str, type]]) -> set[str]:
    """Every option name that one of ``parts`` declares."""
    return {name for _, cls in parts.values() for name in declared_options(cls)}
