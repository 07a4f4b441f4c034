"""The command line, generated: each setting of :class:`~pvae.runs.config.RunConfig` is a flag
``--name-with-dashes`` (type, choices, help, default from its declaration; booleans
``--x/--no-x``), and each option a registered part declares is a flag whose default (None)
is the part's own. Values are parsed here and checked once, when the configuration is made."""
import argparse
import math
import re
import typing
from typing import Any, Iterable, Mapping

from ..checks import value_type
from ..errors import PvaeError
from ..model.config import all_options
from .config import SECTIONS, RunConfig, flag_fields


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: the problem, then where help is."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def flag(name: str) -> str:
    """The flag of the setting ``name``: ``--name-with-dashes``."""
    return "--" + name.replace("_", "-")


def as_flags(err: PvaeError) -> str:
    """The message of ``err`` with the arguments it names (``name`` or ``name=True``, not a
    part of a path or of another word) written as their flags."""
    text = str(err)
    for name in getattr(err, "fields", ()):
        text = re.sub(rf"(?<![\w/.-]){name}(=True)?(?![\w/-]|\.\w)", flag(name), text)
    return text


def number(kind: type):
    """An argparse type: ``kind(text)``, else "expected a (whole) number"."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        return value
    return parse


def _argument(kind: type, default: Any, choices=None) -> dict:
    if kind is bool:
        return dict(action=argparse.BooleanOptionalAction, default=default)
    arg: dict = dict(default=list(default) if isinstance(default, tuple) else default)
    if kind is tuple:
        arg.update(type=number(int), nargs="+")
    elif kind in (int, float):
        arg["type"] = number(kind)
    if choices is not None:
        arg["choices"] = list(choices())
    return arg


def add_settings(parser: argparse.ArgumentParser, names: Iterable[str] | None = None, *,
                 defaults: Mapping[str, Any] | None = None,
                 aliases: Mapping[str, str] | None = None) -> list[str]:
    """Add the flags of the settings ``names`` (all flag settings by default), grouped by
    section, with RunConfig's defaults unless ``defaults`` gives others; returns the names."""
    base, defaults, aliases = RunConfig().to_dict(), dict(defaults or {}), dict(aliases or {})
    wanted = None if names is None else set(names)
    groups: dict[str | None, Any] = {}
    added = []
    for section, f in flag_fields():
        if wanted is not None and f.name not in wanted:
            continue
        if section not in groups:
            groups[section] = parser.add_argument_group(section or "run")
        owner = RunConfig if section is None else SECTIONS[section]
        kind, _ = value_type(typing.get_type_hints(owner)[f.name])
        default = defaults.get(f.name, base[f.name])
        arg = _argument(kind, default, f.metadata.get("choices"))
        strings = [flag(f.name)] + ([aliases[f.name]] if f.name in aliases else [])
        text = f.metadata["help"]
        text += "" if "(default:" in text else " (default: %(default)s)"
        groups[section].add_argument(*strings, dest=f.name, metavar=f.metadata.get("metavar"),
                                     help=text, **arg)
        added.append(f.name)
    return added


def add_part_options(parser: argparse.ArgumentParser) -> list[str]:
    """One flag per option some registered part declares (default None: the part's own)."""
    group = parser.add_argument_group("part options (for the prior, guide or likelihood that "
                                      "takes them; default: the part's own)")
    for option, owners in sorted(all_options().items()):
        kind = type(owners[0][2])
        arg = _argument(kind, None)
        text = "; ".join(f"{role} {name} (default {default!r})" for role, name, default in owners)
        group.add_argument(flag(option), dest=option, help=text, **arg)
    return sorted(all_options())


def parsed(args: argparse.Namespace, names: Iterable[str], options: Iterable[str] = ()
           ) -> dict[str, Any]:
    """The values of ``names`` in ``args`` and of the part ``options`` that were given."""
    values = {name: getattr(args, name) for name in names}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    values.update({k: tuple(v) if isinstance(v, list) else v for k in options
                   if (v := getattr(args, k, None)) is not None})
    return values


def run_config(args: argparse.Namespace, names: Iterable[str], options: Iterable[str] = (),
               base: RunConfig | None = None) -> RunConfig:
    """``base`` (default: RunConfig's defaults) with the parsed flags applied."""
    return (base or RunConfig()).replace(**parsed(args, names, options))
