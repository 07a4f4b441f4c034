"""The one run configuration (docs/quickstart.rst): a frozen :class:`RunConfig` of the run's
own settings and four sections (``data``, ``model``, ``train``, ``eval``), each checked where
it is defined. Setting names are unique across sections, so it is also one flat dict: the
flags, ``pvae compare``'s keys, ``metrics.json["config"]`` and the checkpoint's record."""
import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from ..checks import as_dict, setting, validate
from ..data.registry import DataConfig
from ..errors import ConfigError
from ..infer.estimators import EvalConfig
from ..model.config import VAEConfig, all_options
from ..training.config import TrainConfig

SECTIONS = {"data": DataConfig, "model": VAEConfig, "train": TrainConfig, "eval": EvalConfig}


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run (see the module text); made, checked and frozen once."""

    out: str = setting("runs/mnist", "folder for checkpoint.pt, metrics.json and the figures")
    device: str = setting("auto", "auto: CUDA when torch sees a GPU, else the CPU",
                          choices=lambda: ("auto", "cpu", "cuda"))
    resume: bool = setting(False, "continue the run in OUT from its checkpoint.pt")
    overwrite: bool = setting(False, "replace the run already in OUT (without it, such a "
                              "folder is refused)")
    progress: bool = setting(True, "show progress (default: on): bars on a terminal, else a "
                             "log line every PVAE_PROGRESS_SECONDS seconds (30 unless set)")
    data: DataConfig = field(default_factory=DataConfig)
    model: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(seed=0))
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        validate(self)
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"the {name} section must be a {cls.__name__}")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other: continue the run or "
                              "replace it", "resume", "overwrite")
        supervision = self.model.supervision
        if self.data.labelled is not None and supervision != "semi":
            raise ConfigError(f"labelled applies to supervision semi (the labels kept for "
                              f"semi-supervised training), not {supervision}; drop labelled or "
                              "use supervision semi", "labelled", "supervision")
        if supervision == "semi" and self.train.loss != "elbo":
            raise ConfigError(f"supervision semi sums the label y by enumeration, which loss "
                              f"{self.train.loss} cannot; use loss elbo (TraceEnum_ELBO)",
                              "loss", "supervision")

    def to_dict(self) -> dict[str, Any]:
        """Every setting's value, flat and JSON-ready (the model's ``options`` a dict)."""
        out = {f.name: getattr(self, f.name) for f in own_settings()}
        out.update(as_dict(self.data), **self.model.to_dict(), **as_dict(self.train),
                   **as_dict(self.eval))
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], strict: bool = True) -> "RunConfig":
        """The inverse of :meth:`to_dict`; missing settings take their defaults. With
        ``strict`` a key that is no setting is a ConfigError."""
        known = section_of()
        return cls().replace(**{k: v for k, v in values.items() if strict or k in known})

    def replace(self, **changes) -> "RunConfig":
        """A copy with ``changes``: setting names of any section, or part options (which join
        the model's ``options``); ConfigError naming an unknown key and the closest one."""
        own, sections, options = {}, {name: {} for name in SECTIONS}, {}
        where = section_of()
        for key, value in changes.items():
            if key in where:
                (own if where[key] is None else sections[where[key]])[key] = value
            elif key in all_options():
                options[key] = value
            else:
                names = sorted(set(where) | set(all_options()))
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown setting {key!r}{hint}; settings are the run's flags "
                                  "and the part options")
        if options:
            sections["model"]["options"] = {**sections["model"].get(
                "options", self.model.options), **options}
        made = {name: dataclasses.replace(getattr(self, name), **values)
                for name, values in sections.items() if values}
        return dataclasses.replace(self, **own, **made)


def own_settings() -> list[dataclasses.Field]:
    """The run's own settings (not its sections)."""
    return [f for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS]


def section_of() -> dict[str, str | None]:
    """``{setting: section}`` for every setting (None: the run's own), ``options`` included."""
    out: dict[str, str | None] = {f.name: None for f in own_settings()}
    for name, cls in SECTIONS.items():
        out.update((f.name, name) for f in dataclasses.fields(cls))
    return out


def flag_fields() -> Iterator[tuple[str | None, dataclasses.Field]]:
    """``(section, field)`` of every setting that is a command-line flag, in order."""
    yield from ((None, f) for f in own_settings())
    for name, cls in SECTIONS.items():
        yield from ((name, f) for f in dataclasses.fields(cls) if f.metadata.get("flag"))
