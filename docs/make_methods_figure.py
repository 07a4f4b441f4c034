"""Draw docs/_static/evaluation_methods.png: log p(x) estimate against CPU seconds, per method.

Reads what ``pvae evaluate --out`` wrote into the subfolders of one folder (default
``runs/eval``), each IS run in a subfolder of its own: ``metrics_is.json`` with
``test_log_px.npy`` (IS; its ``eval_proposal`` tells the encoder's proposal from the refined
one) and ``metrics_ais.json`` with ``test_log_px_ais.npy`` (AIS), keeps the runs on the same
first n test images (default 100), and plots each one's mean estimate against the CPU seconds
it took per image; the bars are ±2 s.e. of its paired difference, image by image, from the
largest AIS budget (the between-image spread, shared by all methods, cancels):

    python docs/make_methods_figure.py --runs runs/eval --n 100
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvae.runs.plotting import _plt  # noqa: E402


def runs(folder: Path, n: int) -> list[tuple[str, float, np.ndarray, int]]:
    """(label, CPU seconds per image, per-image estimates, budget) of every run on n images."""
    rows = []
    for path in sorted(folder.glob("*/metrics_*.json")):
        m = json.loads(path.read_text())
        if path.name == "metrics_is.json" and m.get("n_test") == n:
            values = np.load(path.parent / "test_log_px.npy")
            rows.append((f"IS, {m['eval_proposal']}, K={m['eval_samples']}",
                         m["eval_cpu_seconds"] / n, values, 0))
        elif path.name == "metrics_ais.json" and m.get("ais_n_test") == n:
            rows.append((f"AIS, T={m['ais_steps']}, C={m['ais_chains']}",
                         m["ais_cpu_seconds"] / n, np.load(path.parent / "test_log_px_ais.npy"),
                         m["ais_steps"] * m["ais_chains"]))
    return sorted(rows, key=lambda r: r[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/eval")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "docs" / "_static" / "evaluation_methods.png"))
    args = ap.parse_args()
    rows = runs(Path(args.runs), args.n)
    if not rows:
        raise SystemExit(f"no pvae evaluate runs on {args.n} images under {args.runs}")
    ref = max(rows, key=lambda r: r[3])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, sec, values, _ in rows:
        diff = values - ref[2]
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        color = "tab:red" if label.startswith("AIS") else (
            "tab:green" if "refined" in label else "tab:blue")
        ax.errorbar(sec, values.mean(), yerr=2 * se, fmt="o", color=color, capsize=3)
        right = label.startswith("AIS")
        ax.annotate(label, (sec, values.mean()), textcoords="offset points",
                    xytext=(-8, -14 if label == ref[0] else 8) if right else (6, -10),
                    ha="right" if right else "left", fontsize=8)
        print(f"{label:24s} {sec:9.3f} CPU-s/image  {values.mean():8.2f}  "
              f"vs {ref[0]}: {diff.mean():+.2f} ± {se:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds per test image (one thread)")
    ax.set_ylabel(f"mean log p(x) estimate, first {args.n} test images")
    ax.set_title(f"bars: ±2 s.e. of the per-image difference from {ref[0]}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
