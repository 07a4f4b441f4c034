"""What a prior, a likelihood and a guide must provide, and how their options are checked.

A part is an ``nn.Module`` class held in a registry (:data:`pvae.priors.PRIORS`, ...). Its
constructor takes, by name, the shared sizes it needs (:data:`SHARED`) and then
keyword-only *options*, each with a default: those keyword-only parameters are the part's
declared options, and the type of each default is the type the option must have. Nothing
else is accepted, so a misspelled option is an error, not a silent default.
"""
from __future__ import annotations

import difflib
import inspect
import math
import os
from numbers import Integral, Real
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from pyro.distributions import Distribution

from .errors import ConfigError

SHARED = ("z_dim", "x_dim", "hidden_dims", "activation", "num_data", "image_shape", "guide")
"""Constructor arguments that are not options: the VAE's sizes, and the guide for a prior."""


@runtime_checkable
class Prior(Protocol):
    """p(z): ``prior()`` returns a distribution with event shape ``(z_dim,)`` and no batch shape."""

    z_dim: int

    def __call__(self) -> Distribution: ...


@runtime_checkable
class Likelihood(Protocol):
    """p(x|z): ``likelihood(z)`` returns a distribution whose event is one flattened example.

    ``data_kind`` is ``"binary"`` (a discrete log-likelihood; the data are binarized) or
    ``"continuous"`` (a log-density); ``check(x)`` raises DataError outside the support;
    ``mean(z)`` is E[x|z], the image a figure shows.
    """

    data_kind: str

    def __call__(self, z: torch.Tensor) -> Distribution: ...

    def mean(self, z: torch.Tensor) -> torch.Tensor: ...

    def check(self, x: torch.Tensor) -> None: ...


@runtime_checkable
class Guide(Protocol):
    """q(z|x): ``guide(x, idx)`` returns a distribution with batch ``(B,)``, event ``(z_dim,)``.

    ``amortized`` is False for a guide that owns one q(z_n) per training example and reads
    the dataset indices ``idx`` of the batch (it has no encoder for new data).
    ``uses_model`` is True for a guide that runs the model's prior and likelihood (the
    semi-amortized refinement): the VAE hands them over with ``bind(prior, likelihood)``.
    """

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


def coerce_option(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (bool, int, float, str or a tuple of ints);
    ConfigError for 2.5 as an int, ``"abc"`` as a number, or a non-finite float."""
    if isinstance(default, tuple):
        items = value.split() if isinstance(value, str) else (
            value if isinstance(value, (list, tuple)) else [value])
        return tuple(whole_number(name, v) for v in items)
    if isinstance(default, bool):
        if not isinstance(value, (bool, str)) or str(value).lower() not in ("true", "false"):
            raise ConfigError(f"option {name} must be true or false, got {value!r}")
        return str(value).lower() == "true"
    if isinstance(default, Integral):
        return whole_number(name, value)
    if isinstance(default, Real):
        number = real_number(value)
        if not math.isfinite(number):
            raise ConfigError(f"option {name} must be a finite number, got {value!r}")
        return number
    if not isinstance(value, type(default)):
        raise ConfigError(f"option {name} must be a {type(default).__name__}, got {value!r}")
    return value


def real_number(value: Any) -> float:
    """``value`` as a float; NaN for a bool or anything ``float()`` refuses."""
    try:
        return math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return math.nan


def env_seconds(name: str, default: float) -> float:
    """The environment variable ``name`` as a positive finite number of seconds, ``default``
    when it is unset or blank; ConfigError for anything else."""
    text = os.environ.get(name, "").strip() or str(default)
    if 0 < real_number(text) < math.inf:
        return real_number(text)
    raise ConfigError(f"{name} must be a positive number of seconds, got {text!r}; fix it or "
                      f"unset it for the default {default:g}")


def whole_number(name: str, value: Any) -> int:
    """``value`` as an int; ConfigError for 2.5, ``"abc"``, True or NaN."""
    number = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if isinstance(number, Real) and not isinstance(number, bool) and math.isfinite(number) \
            and float(number).is_integer():
        return int(number)
    raise ConfigError(f"{name} must be a whole number, got {value!r}")


def split_options(parts: Mapping[str, tuple[str, type]],
                  options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Route each option to every part of ``{role: (name, class)}`` that declares it, coerced
    to its declared type; ConfigError naming an undeclared one and the closest valid one."""
    declared = {role: declared_options(cls) for role, (_, cls) in parts.items()}
    routed: dict[str, dict[str, Any]] = {role: {} for role in parts}
    valid = sorted({name for opts in declared.values() for name in opts})
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
