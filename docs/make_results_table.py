"""Write docs/_static/results.md, results_orderings.md and results.png: the published MNIST
rows beside pvae's, trained at an equal CPU budget, and which published orderings hold.

Reads the runs that ``pvae compare --out RUNS ...`` left in the sub-folders of RUNS
(``metrics.json`` and the per-image ``test_log_px.npy`` of the same first n test images;
the commands are in docs/results.rst) and, if given, one longer run (``--long``):

    python docs/make_results_table.py --runs runs/lit --long runs/lit_hour

A difference between two rows is paired, image by image: its s.e. is that of the mean
per-image difference. An ordering *holds* when the published winner is ahead by more than
two such standard errors, is *reversed* when it is behind by more than two, and is *not
resolved* otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvae.infer.results import stderr  # noqa: E402
from pvae.runs.plotting import _plt  # noqa: E402

BURDA = "Burda et al. 2016, Table 1"
TOMCZAK = ("Tomczak & Welling 2018, Table 2 (their gated nets, z = 40; their standard-prior "
           "VAE: −88.56)")
TWO = "stochastic_layers-2__z_dim-100__"


@dataclass(frozen=True)
class Row:
    """A published row: its label, the sub-folder pvae's run of it wrote, the paper's test
    log p(x) (None where no paper reports this architecture) and where that number is."""

    key: str
    label: str
    folder: str
    paper: float | None
    source: str


ROWS = [
    Row("vae1", "1 layer, VAE, k = 1", "loss-elbo__epochs-165", -86.76, BURDA),
    Row("vae1k5", "1 layer, VAE, k = 5", "loss-elbo__num_particles-5__epochs-70", -86.47, BURDA),
    Row("vae1k50", "1 layer, VAE, k = 50", "loss-elbo__num_particles-50__epochs-8", -86.35,
        BURDA),
    Row("iwae1k5", "1 layer, IWAE, k = 5", "loss-iwae__num_particles-5__epochs-70", -85.54,
        BURDA),
    Row("iwae1k50", "1 layer, IWAE, k = 50", "loss-iwae__num_particles-50__epochs-8", -84.78,
        BURDA),
    Row("vae2", "2 layers, VAE, k = 1", TWO + "epochs-115", -85.33, BURDA),
    Row("vae2k5", "2 layers, VAE, k = 5", TWO + "loss-elbo__num_particles-5__epochs-42", -85.01,
        BURDA),
    Row("vae2k50", "2 layers, VAE, k = 50", TWO + "loss-elbo__num_particles-50__epochs-5",
        -84.78, BURDA),
    Row("iwae2k5", "2 layers, IWAE, k = 5", TWO + "loss-iwae__num_particles-5__epochs-41",
        -83.89, BURDA),
    Row("iwae2k50", "2 layers, IWAE, k = 50", TWO + "loss-iwae__num_particles-50__epochs-5",
        -82.90, BURDA),
    Row("vamp", "1 layer, VampPrior (500 pseudo-inputs)", "prior-vamp__epochs-47", -85.57,
        TOMCZAK),
    Row("iaf", "1 layer, IAF guide", "guide-iaf__epochs-120", None,
        "no MLP row published (Kingma et al. 2016 report conv ResNets)"),
]
STANDARD_TOMCZAK = -88.56  # their standard-prior VAE, the VampPrior row's own baseline

ORDERINGS = [  # (winner, loser, what the literature says)
    ("iwae1k5", "vae1", "IWAE k = 5 > VAE (1 layer)"),
    ("iwae1k50", "iwae1k5", "IWAE k = 50 > IWAE k = 5 (1 layer)"),
    ("iwae1k5", "vae1k5", "IWAE k = 5 > VAE k = 5 (1 layer)"),
    ("iwae1k50", "vae1k50", "IWAE k = 50 > VAE k = 50 (1 layer)"),
    ("vae2", "vae1", "2 layers > 1 layer (VAE)"),
    ("iwae2k5", "iwae1k5", "2 layers > 1 layer (IWAE k = 5)"),
    ("iwae2k50", "iwae1k50", "2 layers > 1 layer (IWAE k = 50)"),
    ("iwae2k5", "vae2", "IWAE k = 5 > VAE (2 layers)"),
    ("iwae2k5", "vae2k5", "IWAE k = 5 > VAE k = 5 (2 layers)"),
    ("iwae2k50", "vae2k50", "IWAE k = 50 > VAE k = 50 (2 layers)"),
    ("iwae2k50", "vae2", "IWAE k = 50 > VAE (2 layers)"),
    ("vamp", "vae1", "VampPrior ≥ standard prior"),
    ("iaf", "vae1", "IAF guide ≥ diagonal (mlp) guide"),
]


def load(runs: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """key -> (metrics.json, per-image log p(x)) for every row whose run is in ``runs``."""
    out = {}
    for row in ROWS:
        folder = runs / row.folder
        if (folder / "metrics.json").exists():
            out[row.key] = (json.loads((folder / "metrics.json").read_text()),
                            np.load(folder / "test_log_px.npy"))
    return out


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of a − b over images and its s.e."""
    return float((a - b).mean()), stderr(a - b)


def verdict(diff: float, se: float) -> str:
    return "holds" if diff > 2 * se else ("**reversed**" if diff < -2 * se else "not resolved")


def row_line(label: str, paper: float | None, m: dict, lp: np.ndarray, delta: str,
             elbo: str) -> str:
    """One Markdown row of the rows table from a run's metrics.json and per-image log p(x)."""
    return (f"| {label} | {_paper(paper)} | {lp.mean():.2f} ± {stderr(lp):.2f} | {delta} | "
            f"{m['epochs']} | {m['train_cpu_seconds'] / 60:.1f} | "
            f"{m['psis_khat_frac_bad']:.0%} | {elbo} |")


def rows_table(found: dict, long: tuple[dict, np.ndarray] | None) -> str:
    base = found["vae1"][1]
    curve = [r["test_elbo"] for r in found["vae1"][0]["history"]]
    lines = ["| row | paper | pvae, test log p(x) ± s.e. | Δ vs 1-layer VAE ± s.e. | epochs "
             "| train CPU min | k-hat > 0.7 | test ELBO (1-layer VAE's at these epochs) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        if row.key not in found:
            lines.append(f"| {row.label} | {_paper(row.paper)} | not run | | | | | |")
            continue
        m, lp = found[row.key]
        delta = "baseline" if row.key == "vae1" else "{:+.2f} ± {:.2f}".format(*paired(lp, base))
        elbo = f"{m['history'][-1]['test_elbo']:.2f}"
        if row.key != "vae1" and m["epochs"] <= len(curve):
            elbo += f" ({curve[m['epochs'] - 1]:.2f})"
        lines.append(row_line(row.label, row.paper, m, lp, delta, elbo))
    if long is not None:
        m, lp = long
        lines.append(row_line(f"1 layer, VAE, k = 1, `{m['config']['recipe']}` recipe, "
                              f"{m['epochs']} epochs", ROWS[0].paper, m, lp,
                              "{:+.2f} ± {:.2f}".format(*paired(lp, base)),
                              f"{m['history'][-1]['test_elbo']:.2f}"))
    n = base.size
    k = found["vae1"][0]["eval_samples"]
    sources = sorted({r.source for r in ROWS})
    return "\n".join(lines) + (
        f"\n\nNats per image on the first {n} binarized MNIST test images, importance sampling "
        f"with K = {k}; Δ paired image by image; test ELBO after the last epoch (one "
        "sample per image), beside the 1-layer VAE's after as many epochs. Paper numbers: "
        + "; ".join(sources) + "." +
        (" Not run: rows this machine's time did not reach (the GPU command of "
         "docs/results.rst runs them all)." if len(found) < len(ROWS) else "") +
        (" Last row: the longer run (about an hour of CPU), outside the equal budget."
         if long is not None else "") + "\n")


def _paper(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def orderings_table(found: dict) -> str:
    paper = {r.key: r.paper for r in ROWS}
    lines = ["| published ordering | paper Δ | pvae Δ ± s.e. | at this budget |",
             "|---|---|---|---|"]
    for win, lose, text in ORDERINGS:
        if win not in found or lose not in found:
            continue
        ref = STANDARD_TOMCZAK if win == "vamp" else paper[lose]
        pd = None if paper[win] is None else paper[win] - ref
        diff, se = paired(found[win][1], found[lose][1])
        lines.append(f"| {text} | {'—' if pd is None else f'{pd:+.2f}'} | {diff:+.2f} ± "
                     f"{se:.2f} | {verdict(diff, se)} |")
    return "\n".join(lines) + "\n"


def figure(found: dict, path: Path) -> None:
    """pvae's log p(x) (±2 s.e.) beside the paper's, one line per row."""
    shown = [r for r in ROWS if r.key in found]
    fig, ax = _plt().subplots(figsize=(7, 0.42 * len(shown) + 1.4))
    for i, row in enumerate(shown):
        lp = found[row.key][1]
        ax.errorbar(lp.mean(), i, xerr=2 * stderr(lp), fmt="o",
                    color="tab:blue", capsize=3, label="pvae, equal CPU budget" if i == 0 else None)
        if row.paper is not None:
            ax.plot(row.paper, i, "x", color="black", label="paper" if i == 0 else None)
    ax.set_yticks(range(len(shown)), [r.label for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test log p(x), nats per image (bars: ±2 s.e.)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/lit"))
    parser.add_argument("--long", type=Path, default=None,
                        help="a longer run of the 1-layer VAE (its metrics.json folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_static")
    args = parser.parse_args()
    found = load(args.runs)
    if "vae1" not in found:
        sys.exit(f"error: no baseline run in {args.runs / ROWS[0].folder}; run the commands "
                 "in docs/results.rst first")
    long = None
    if args.long is not None:
        long = (json.loads((args.long / "metrics.json").read_text()),
                np.load(args.long / "test_log_px.npy"))
    table = rows_table(found, long)
    orders = orderings_table(found)
    (args.out / "results.md").write_text(table)
    (args.out / "results_orderings.md").write_text(orders)
    figure(found, args.out / "results.png")
    print(table + "\n" + orders)


if __name__ == "__main__":
    main()
