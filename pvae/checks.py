"""Checks shared by every configuration: whole, finite or bounded numbers, and the settings of a
frozen dataclass, declared with :func:`setting` and checked by :func:`validate` when made."""
import dataclasses
import math
import os
import types
import typing
from numbers import Integral, Real
from typing import Any, Callable

import numpy as np

from .errors import ConfigError

SEED_LIMIT = 2**32 - 1


def real_number(value: Any) -> float:
    """``value`` as a float; NaN for a bool or anything ``float()`` refuses."""
    try:
        return math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return math.nan


def whole_number(name: str, value: Any) -> int:
    """``value`` as an int; ConfigError for 2.5, ``"abc"``, True or NaN."""
    try:
        number = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, (Real, np.integer)) and not isinstance(number, bool) \
            and math.isfinite(number) and float(number).is_integer():
        return int(number)
    raise ConfigError(f"{name} must be a whole number, got {value!r}", name)


def check_count(name: str, value, allow_none: bool = False) -> int | None:
    """``value`` as an int; ConfigError unless it is an integer >= 1 (or None, if allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1{' or None' if allow_none else ''}, "
                          f"got {value!r}", name.split()[0])
    return int(value)


def coerce_option(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (bool, int, float, str or a tuple of ints);
    ConfigError for 2.5 as an int, ``"abc"`` as a number, or a non-finite float."""
    if isinstance(default, tuple):
        items = value.split() if isinstance(value, str) else (
            value if isinstance(value, (list, tuple)) else [value])
        return tuple(whole_number(name, v) for v in items)
    if isinstance(default, bool):
        if not isinstance(value, (bool, str)) or str(value).lower() not in ("true", "false"):
            raise ConfigError(f"{name} must be true or false, got {value!r}", name)
        return str(value).lower() == "true"
    if isinstance(default, Integral):
        return whole_number(name, value)
    if isinstance(default, Real):
        number = real_number(value)
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, got {value!r}", name)
        return number
    if not isinstance(value, type(default)):
        raise ConfigError(f"{name} must be a {type(default).__name__}, got {value!r}", name)
    return value


def env_seconds(name: str, default: float) -> float:
    """The environment variable ``name`` as a positive finite number of seconds, ``default``
    when it is unset or blank; ConfigError for anything else."""
    text = os.environ.get(name, "").strip() or str(default)
    if 0 < real_number(text) < math.inf:
        return real_number(text)
    raise ConfigError(f"{name} must be a positive number of seconds, got {text!r}; fix it or "
                      f"unset it for the default {default:g}")


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            above: bool = False, choices: Callable[[], Any] | None = None, flag: bool = True,
            metavar: str | None = None) -> Any:
    """A field of a configuration dataclass: ``default``, the ``help`` of its flag, and what
    :func:`validate` checks: ``low`` ≤ value (< with ``above``) ≤ ``high``, value in
    ``choices()`` (a callable, so registries are read when the check runs). ``flag=False``:
    a value the run derives (from the data, say), not a command-line flag."""
    meta = dict(help=help, low=low, high=high, above=above, choices=choices, flag=flag,
                metavar=metavar)
    return dataclasses.field(default=default, metadata=meta)


def value_type(annotation) -> tuple[type, bool]:
    """``(type, optional)`` of an annotation: ``(tuple, True)`` for ``tuple[int, ...] | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = next(a for a in typing.get_args(annotation) if a is not type(None))
        return value_type(inner)[0], True
    return (typing.get_origin(annotation) or annotation), False


def _bounds_error(f: dataclasses.Field, value: Any) -> str | None:
    low, high, above, choices = (f.metadata.get(k) for k in ("low", "high", "above", "choices"))
    if choices is not None and value not in choices():
        return f"unknown {f.name} {value!r}; choose one of: {', '.join(map(str, choices()))}"
    items = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(v, Real) for v in items):
        return None
    if low is not None and high is not None and not all(low <= v <= high for v in items):
        return f"{f.name} must be in [{low}, {high}], got {value!r}"
    if low is None or not any(v <= low if above else v < low for v in items):
        return None
    if isinstance(items[0], float):
        need = f"a finite number {'>' if above else '>='} {low:g}"
    else:
        need = "positive whole numbers" if isinstance(value, tuple) else f"at least {low:g}"
    return f"{f.name} must be {need}, got {value!r}"


def validate(obj: Any) -> None:
    """Coerce every setting of the frozen dataclass ``obj`` to its annotated type (``tuple``:
    of whole numbers) and check its declared bounds; one ConfigError naming the first bad one."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if "help" not in f.metadata:
            continue
        value = getattr(obj, f.name)
        kind, optional = value_type(hints[f.name])
        if value is None and optional:
            continue
        if kind in (tuple, bool, int, float):
            value = coerce_option(f.name, value, kind())
        elif kind is str and not isinstance(value, str):
            raise ConfigError(f"{f.name} must be a name or text, got {value!r}", f.name)
        problem = _bounds_error(f, value)
        if problem:
            raise ConfigError(problem, f.name)
        object.__setattr__(obj, f.name, value)


def as_dict(obj: Any) -> dict[str, Any]:
    """The fields of the dataclass ``obj`` as plain JSON values (tuples become lists)."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def from_dict(cls: type, values: dict[str, Any], strict: bool = True) -> Any:
    """``cls(**values)``, the inverse of :func:`as_dict`; keys that are not fields of ``cls``
    are a ConfigError with ``strict``, else left out."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown and strict:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; valid: {sorted(names)}")
    return cls(**{k: v for k, v in values.items() if k in names})
