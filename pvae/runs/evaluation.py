"""Scoring a trained VAE with the registered estimators, the same in the main job and in
``pvae evaluate`` (each rank scores its shard, gathered in order; the values are written
before the figure, which may fail only as a warning), and what a run reports: the summary
table and the JSON files."""
import dataclasses
import json
import logging
import math
import platform
from pathlib import Path
from typing import Callable

import numpy as np
import pyro
import torch

from ..files import atomic_write
from ..infer.estimators import ESTIMATORS, EvalConfig
from ..infer.results import Estimate
from ..model.vae import VAE
from ..training import distributed
from .plotting import plot_estimate

log = logging.getLogger(__name__)


def gather_result(result):
    """A per-example result of this rank's shard with every per-example array (nested ones too)
    gathered in order on every rank; for one process, ``result`` itself."""
    if distributed.world_size() == 1:
        return result
    changes = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, (torch.Tensor, np.ndarray)):
            changes[f.name] = distributed.gather(value)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = gather_result(value)
    return dataclasses.replace(result, **changes)


def estimate(name: str, vae: VAE, x: torch.Tensor, config: EvalConfig,
             progress: bool = False, **labels: torch.Tensor) -> Estimate:
    """The registered estimator ``name`` on ``x`` (and ``labels``, such as ``y=``, one per
    example), sharded across the ranks and gathered; its warning (on the whole of ``x``) logged
    once, by rank 0."""
    est = ESTIMATORS[name]
    mine = {k: distributed.shard(v) for k, v in labels.items()}
    result = gather_result(est.run(vae.model, vae.guide, distributed.shard(x), config, vae,
                                   progress, **mine))
    if distributed.is_main() and result.warning():
        log.warning("%s", result.warning())
    return result


def plan(method: str) -> list[str]:
    """The estimators a training run with ``method`` runs: importance sampling on the test
    set, then what ``method`` adds (with the methods it needs)."""
    names = ["is"]
    for name in (*ESTIMATORS[method].also, method):
        if name not in names:
            names.append(name)
    return names


def draw(figure: Callable[[], Path], name: str) -> Path | None:
    """Draw one figure; a failure is a warning naming it (the results are already written)."""
    try:
        return figure()
    except Exception as err:  # a figure must never cost a run its results
        log.warning("could not draw %s (%s: %s); the run's results are written", name,
                    type(err).__name__, err)
        return None


def write(name: str, result: Estimate, out: Path) -> list[Path]:
    """The per-example values of ``result`` (``.npy``) and its figure, under the estimator's
    file names; the figure last, and never at the cost of the values."""
    est = ESTIMATORS[name]
    np.save(out / est.per_example, result.values())
    figure = draw(lambda: plot_estimate(result, out / est.figure), est.figure)
    return [out / est.per_example] + ([figure] if figure else [])


def versions() -> dict[str, str]:
    """Versions of Python, torch and Pyro, for metrics.json."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "pyro": pyro.__version__}


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as JSON atomically (paths as strings)."""
    atomic_write(path, json.dumps(obj, indent=2, default=str).encode())


def format_number(v, digits: int = 2) -> str:
    """``v`` with ``digits`` decimals; ``n/a`` for None or a non-finite number."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def estimate_rows(values: dict, labels: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A row ``(label, "values[key] ± values[key_stderr]")`` per ``(label, key)``."""
    return [(label, f"{format_number(values.get(key))} ± "
                    f"{format_number(values.get(key + '_stderr'))}") for label, key in labels]


def format_rows(rows: list[tuple[str, str]]) -> str:
    """Label/value rows as an aligned plain-text table, in nats per image."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n(nats per image)"


def train_rows(metrics: dict) -> list[tuple[str, str]]:
    """The training rows of a run's summary."""
    return [("epochs / steps", f"{metrics['epochs']} / {metrics['steps']}"),
            ("train seconds", f"{metrics['train_seconds']:.1f}"),
            ("train ELBO", format_number(metrics["train_elbo"]))]


def is_rows(metrics: dict) -> list[tuple[str, str]]:
    """The rows of importance sampling's entries (``test_log_px``, k-hat, ...; a conditional
    run's ``test_log_px_given_y``)."""
    k = metrics.get("eval_samples")
    given = "_given_y" if "test_log_px_given_y" in metrics else ""
    rows = [("test images", str(metrics.get("n_test") or "none")),
            *estimate_rows(metrics, [(f"test ELBO{' of log p(x|y)' if given else ''}",
                                      f"test_elbo{given}"),
                                     (f"test log p(x{'|y' if given else ''})"
                                      + (f", K={k}" if k else ""), f"test_log_px{given}")])]
    khat = metrics.get("psis_khat_max")
    if khat is None and k:
        why = "K <= 20 is too few draws to fit a tail" if k <= 20 else "no tail could be fitted"
        return rows + [("PSIS k-hat", f"unknown: {why}")]
    rows.append(("PSIS k-hat max", format_number(khat)))
    if khat is not None:
        rows.append(("k-hat > 0.7", f"{100 * metrics['psis_khat_frac_bad']:.1f}% of images"))
    return rows


def ais_rows(metrics: dict) -> list[tuple[str, str]]:
    """The rows of AIS's entries (``test_log_px_ais`` or ``test_log_px_given_y_ais``, ...)."""
    key = next((k for k in ("test_log_px_ais", "test_log_px_given_y_ais")
                if metrics.get(k) is not None), None)
    if key is None:
        return []
    budget = f"T={metrics['ais_steps']}, C={metrics['ais_chains']}"
    what = "log p(x|y)" if "given_y" in key else "log p(x)"
    return [("test images (AIS)", str(metrics["ais_n_test"])),
            *estimate_rows(metrics, [(f"test {what}, AIS {budget}", key)]),
            ("HMC acceptance", format_number(metrics["ais_accept_rate"])),
            ("s.e. across chains (mean)", format_number(metrics.get("ais_chain_stderr"))
             + ("" if metrics.get("ais_chain_stderr") is not None else ": one chain per image")),
            ("AIS seconds", f"{metrics['ais_seconds']:.0f}")]


def bdmc_rows(metrics: dict) -> list[tuple[str, str]]:
    """The rows of BDMC's entries (``bdmc_*``)."""
    if metrics.get("bdmc_lower") is None:
        return []
    return [("simulated images (BDMC)", str(metrics["bdmc_n"])),
            *estimate_rows(metrics, [("BDMC lower bound", "bdmc_lower"),
                                     ("BDMC upper bound", "bdmc_upper"),
                                     ("BDMC gap", "bdmc_gap")])]


ROWS = {"is": is_rows, "ais": ais_rows, "bdmc": bdmc_rows}
"""The summary rows of each registered estimator's entries, by estimator name."""
