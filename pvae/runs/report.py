"""What a run reports: the summary table it prints, and the JSON files it writes."""
import json
import math
import platform
from pathlib import Path

import pyro
import torch

from ..files import atomic_write


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
    """The rows of importance sampling's entries (``test_log_px``, k-hat, ...)."""
    k = metrics.get("eval_samples")
    rows = [("test images", str(metrics.get("n_test") or "none")),
            *estimate_rows(metrics, [("test ELBO", "test_elbo"),
                                     ("test log p(x)" + (f", K={k}" if k else ""), "test_log_px")])]
    khat = metrics.get("psis_khat_max")
    if khat is None and k:
        why = "K <= 20 is too few draws to fit a tail" if k <= 20 else "no tail could be fitted"
        return rows + [("PSIS k-hat", f"unknown: {why}")]
    rows.append(("PSIS k-hat max", format_number(khat)))
    if khat is not None:
        rows.append(("k-hat > 0.7", f"{100 * metrics['psis_khat_frac_bad']:.1f}% of images"))
    return rows


def ais_rows(metrics: dict) -> list[tuple[str, str]]:
    """The rows of AIS's entries (``test_log_px_ais``, ...)."""
    if metrics.get("test_log_px_ais") is None:
        return []
    budget = f"T={metrics['ais_steps']}, C={metrics['ais_chains']}"
    return [("test images (AIS)", str(metrics["ais_n_test"])),
            *estimate_rows(metrics, [(f"test log p(x), AIS {budget}", "test_log_px_ais")]),
            ("HMC acceptance", format_number(metrics["ais_accept_rate"])),
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
