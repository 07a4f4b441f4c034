"""Compare configurations trained with one seed and budget (docs/swapping.rst): a row *beats*
the first, the baseline, when its mean test log p(x) is higher by more than two standard
errors of the difference, paired per image where both saved ``test_log_px.npy``."""
import contextlib
import csv
import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DivergenceError
from ..files import check_writable, run_marker
from ..infer.estimators import ESTIMATORS
from ..model.config import all_options
from ..model.parts import options_taken
from . import experiment
from .config import RunConfig
from .plotting import plot_comparison
from .evaluation import format_number

log = logging.getLogger(__name__)
PER_EXAMPLE_FILE = ESTIMATORS["is"].per_example
_SKIP_FIELDS = {"out", "resume", "overwrite", "progress", "device", "data_dir", "chunk_size",
                "method", "ais_steps", "ais_chains", "ais_leapfrog", "ais_subset", "x_dim",
                "image_shape", "num_data", "compile", "ais_compile"}
"""Settings that change neither the trained model nor its importance-sampled numbers
(``compile``: the same loss and gradients, to float32 rounding)."""
METRIC_FIELDS = ("test_elbo", "test_log_px", "test_log_px_stderr", "psis_khat_max",
                 "train_seconds", "train_cpu_seconds", "epochs", "test_accuracy",
                 "test_log_px_given_y")


@dataclass(frozen=True)
class CompareRow:
    """One configuration's results; ``diff`` is its mean log p(x) minus the baseline's;
    ``train_cpu_seconds`` None for a run that did not measure it."""

    name: str
    out: str
    test_elbo: float | None
    test_log_px: float | None
    test_log_px_stderr: float | None
    psis_khat_max: float | None
    train_seconds: float | None
    likelihood_kind: str
    diff: float | None = None
    diff_stderr: float | None = None
    paired: bool = False
    beats_baseline: bool = False
    error: str | None = None
    train_cpu_seconds: float | None = None
    epochs: int | None = None
    test_accuracy: float | None = None
    test_log_px_given_y: float | None = None


def _value(text: str):
    with contextlib.suppress(ValueError):
        return json.loads(text.lower() if text.lower() in ("true", "false") else text)
    return text


def parse_setting(text: str) -> dict:
    """``"prior=vamp,guide=iaf,num_pseudo_inputs=100"`` -> a dict of typed values."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"cannot read configuration {text!r}: write key=value pairs "
                              f"separated by commas, e.g. 'prior=vamp,guide=iaf'")
        out[key.strip().replace("-", "_")] = _value(value.strip())
    if not out:
        raise ConfigError("an empty configuration: write e.g. 'prior=standard,guide=mlp'")
    return out


def grid(**axes: Sequence[str] | None) -> list[dict]:
    """Every combination of the given axes, e.g. ``grid(prior=[...], guide=[...])``, in order."""
    settings: list[dict] = [{}]
    for key, values in axes.items():
        if values:
            settings = [{**s, key: v} for s in settings for v in values]
    return settings if settings != [{}] else []


def setting_name(setting: dict) -> str:
    """The table label of a configuration: ``prior=vamp,guide=iaf``."""
    return ",".join(f"{k}={v}" for k, v in setting.items())


def config_for(base: RunConfig, setting: dict, out: Path,
               options: Mapping[str, Any] | None = None) -> RunConfig:
    """``base`` with ``setting`` applied (keys: settings or part options); the shared ``options``
    (and ``base``'s) reach only the configurations whose parts declare them."""
    parts = {k: v for k, v in setting.items() if k in all_options()}
    merged = base.replace(**{k: v for k, v in setting.items() if k not in parts}, options={},
                          out=str(out), resume=False)
    taken = options_taken(merged.model.parts())
    shared = {k: v for k, v in {**base.model.options, **(options or {})}.items() if k in taken}
    return merged.replace(options=shared, **parts)


def plan(base: RunConfig, settings: Sequence[dict], out: Path, reuse: bool = False,
         options: Mapping[str, Any] | None = None) -> list:
    """Every configuration's settings, checked before any trains: ConfigError for an invalid or
    repeated one, a shared option none takes, or a held sub-folder without reuse or overwrite."""
    if not settings:
        raise ConfigError("nothing to compare: give --configs 'prior=standard,guide=mlp' ... "
                          "or a grid with --priors/--guides/--likelihoods/--losses")
    configs, seen = [], {}
    for setting in settings:
        name = setting_name(setting)
        sub = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("=", "-").replace(",", "__"))
        try:
            cfg = config_for(base, setting, out / (sub or "run"), options)
        except ConfigError as err:
            raise ConfigError(f"configuration {name!r}: {err}") from err
        key = json.dumps(_comparable_config(cfg), sort_keys=True, default=str)
        if key in seen:
            raise ConfigError(f"configurations {seen[key]!r} and {name!r} train the same model; "
                              "drop one")
        seen[key] = name
        if run_marker(cfg.out) and not (reuse or base.overwrite):
            raise ConfigError(f"{cfg.out} holds a finished run; pass --reuse to read it, "
                              "--overwrite to retrain it, or choose another --out")
        configs.append(cfg)
    unused = set(options or {}) - {k for c in configs for k in c.model.options}
    if unused:
        raise ConfigError(f"option(s) {sorted(unused)} apply to none of the configurations; "
                          "drop them or add a configuration whose parts take them")
    return configs


def _comparable_config(cfg: RunConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in _SKIP_FIELDS}


def _reusable(cfg: RunConfig) -> dict | None:
    path = Path(cfg.out) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    stored = metrics.get("config", {})
    same = all(stored.get(k) == v for k, v in _comparable_config(cfg).items())
    return metrics if metrics and same else None


def _difference(row: CompareRow, base: CompareRow) -> CompareRow:
    if row.likelihood_kind != base.likelihood_kind or None in (row.test_log_px, base.test_log_px):
        return row
    paths = [Path(r.out) / PER_EXAMPLE_FILE for r in (row, base)]
    a, b = (np.load(path) if path.exists() else None for path in paths)
    if a is not None and b is not None and a.shape == b.shape and a.shape[0] > 1:
        d = a - b
        diff, se, paired = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.shape[0])), True
    else:
        diff = row.test_log_px - base.test_log_px
        se = math.hypot(row.test_log_px_stderr or 0.0, base.test_log_px_stderr or 0.0)
        paired = False
    return dataclasses.replace(row, diff=diff, diff_stderr=se, paired=paired,
                               beats_baseline=row is not base and diff > 2 * se)


def compare(base: RunConfig, settings: Sequence[dict], out: str | Path, reuse: bool = False,
            options: Mapping[str, Any] | None = None) -> list[CompareRow]:
    """Train ``base`` modified by each setting in a sub-folder of ``out`` (``reuse``: read a
    matching finished one), a diverged run a failed row; write compare.md, .csv and .png."""
    out = Path(out)
    configs = plan(base, settings, out, reuse, options)
    check_writable(out)
    rows: list[CompareRow] = []
    for setting, cfg in zip(settings, configs):
        name, error = setting_name(setting), None
        try:
            metrics = (_reusable(cfg) if reuse else None) or \
                experiment.run(cfg.replace(overwrite=reuse or base.overwrite))
        except DivergenceError as err:
            log.warning("%s: %s", name, err)
            metrics, error = {}, str(err).split(";")[0]
        rows.append(CompareRow(
            name=name, out=cfg.out, error=error, **{k: metrics.get(k) for k in METRIC_FIELDS},
            likelihood_kind=str(metrics.get("likelihood_kind", cfg.model.likelihood))))
    rows = [_difference(r, rows[0]) for r in rows]
    (out / "compare.md").write_text(format_table(rows, base))
    with open(out / "compare.csv", "w", newline="") as table:
        csv.writer(table).writerows([[f.name for f in dataclasses.fields(CompareRow)],
                                     *map(dataclasses.astuple, rows)])
    plot_comparison(rows, out / "compare.png")
    return rows


def format_table(rows: Sequence[CompareRow], base: RunConfig) -> str:
    """The comparison as a Markdown table, with notes on the test and the shared budget."""
    accuracy = any(r.test_accuracy is not None for r in rows)
    lines = ["| config | epochs | test ELBO | test log p(x) ± s.e. | Δ vs baseline ± s.e. "
             "| k-hat max | train s | train CPU s |" + (" test accuracy |" if accuracy else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if accuracy else "")]
    for i, r in enumerate(rows):
        if r.error:
            delta = f"failed: {r.error}"
        elif i == 0:
            delta = "baseline"
        elif r.diff is None:
            delta = "not comparable"
        else:
            delta = f"{r.diff:+.2f} ± {r.diff_stderr:.2f}{' (paired)' if r.paired else ''}"
            delta += " **better**" if r.beats_baseline else ""
        unknown = r.psis_khat_max is None and r.test_log_px is not None  # no tail fitted
        numbers = [str(r.epochs or "n/a"), format_number(r.test_elbo),
                   format_number(r.test_log_px) + " ± " + format_number(r.test_log_px_stderr),
                   delta, "unknown" if unknown else format_number(r.psis_khat_max),
                   format_number(r.train_seconds, 0), format_number(r.train_cpu_seconds, 0)]
        if accuracy:
            numbers.append("n/a" if r.test_accuracy is None else f"{100 * r.test_accuracy:.2f}%")
        lines.append(f"| {r.name} | {' | '.join(numbers)} |")
    khats = [r.psis_khat_max for r in rows if r.psis_khat_max is not None]
    ran = {r.epochs for r in rows if r.epochs is not None}
    epochs = (f"epochs {base.train.epochs}" if ran <= {base.train.epochs} else
              "the epochs of each row (set per configuration)")
    notes = [(True, "Nats per test image. **better**: mean log p(x) above the baseline "
                    "(first row) by more than 2 standard errors of the difference."),
             (any(r.diff is not None and not r.paired for r in rows[1:]),
              "Unpaired differences use sqrt(se₁² + se₂²); the runs share the test "
              "images, so this overstates the s.e. and the test is conservative."),
             (any(r.paired for r in rows[1:]),
              "(paired): s.e. of the mean per-image difference on the same test images."),
             (any(r.test_log_px_given_y is not None for r in rows),
              "A conditional row models p(x|y): its test_log_px_given_y (metrics.json) is not "
              "a log p(x), so it has none here."),
             (bool(khats) and max(khats) > 0.7,
              "k-hat max above 0.7: some examples' log p(x) estimates are unreliable "
              "(too few importance samples for the guide); read those rows with care."),
             (True, f"Shared budget: {epochs}, batch {base.train.batch_size}, seed "
                    f"{base.train.seed}, train subset {base.data.train_subset or 'all'}, test "
                    f"subset {base.data.test_subset or 'all'}, K = {base.eval.eval_samples} "
                    "importance samples.")]
    return "\n".join(lines + [""] + [note for shown, note in notes if shown]) + "\n"
