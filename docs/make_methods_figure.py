"""Draw docs/_static/evaluation_methods.png: log p(x) estimate against CPU seconds, per method.

Reads the ``metrics_eval.json`` / ``metrics_ais.json`` files that ``pvae evaluate`` wrote
into the subfolders of one folder (default ``runs/eval``), keeps the runs on the same
number of test images (default 100), and plots each one's mean estimate (± 2 s.e. over
images) against the CPU seconds it took per image:

    python docs/make_methods_figure.py --runs runs/eval --n 100
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvae.plotting import _plt  # noqa: E402


def runs(folder: Path, n: int) -> list[tuple[str, float, float, float]]:
    """(label, CPU seconds per image, mean, s.e.) of every IS and AIS run on n images."""
    rows = []
    for path in sorted(folder.glob("*/metrics_*.json")):
        m = json.loads(path.read_text())
        if path.name == "metrics_eval.json" and m.get("n_test") == n:
            label = f"IS, {m['eval_proposal']}, K={m['eval_samples']}"
            rows.append((label, m["eval_cpu_seconds"] / n, m["test_log_px"],
                         m["test_log_px_stderr"]))
        elif path.name == "metrics_ais.json" and m.get("ais_n_test") == n:
            label = f"AIS, T={m['ais_steps']}, C={m['ais_chains']}"
            rows.append((label, m["ais_cpu_seconds"] / n, m["test_log_px_ais"],
                         m["test_log_px_ais_stderr"]))
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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, sec, mean, se in rows:
        color = "tab:red" if label.startswith("AIS") else (
            "tab:green" if "refined" in label else "tab:blue")
        ax.errorbar(sec, mean, yerr=2 * se / 10, fmt="o", color=color, capsize=3)
        ax.annotate(label, (sec, mean), textcoords="offset points", xytext=(6, -3), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds per test image (one thread)")
    ax.set_ylabel(f"mean log p(x) estimate, first {args.n} test images (nats)")
    ax.set_title("Estimates of the same model's log p(x): higher is tighter "
                 "(bars: ±2 s.e. of the paired difference scale, s.e./10)", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    for label, sec, mean, se in rows:
        print(f"{label:28s} {sec:9.3f} CPU-s/image  {mean:8.2f} ± {se:.2f}")


if __name__ == "__main__":
    main()
