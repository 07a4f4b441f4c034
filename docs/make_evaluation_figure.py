"""Draw docs/_static/evaluation_vs_k.png: the IS estimate of log p(x) against K.

On the linear-Gaussian VAE of tests/linear_gaussian.py (exact log p(x) known), with a
deliberately poor diagonal guide (posterior mean shifted by 0.5, scales ×1.5), for 200
examples: the mean error of the estimate and the fraction of examples with k-hat > 0.7,
for K = 1 … 5000. Runs in a few seconds:

    python docs/make_evaluation_figure.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from linear_gaussian import (ShiftedDiagonalGuide, exact_log_px, make_problem,  # noqa: E402
                             make_vae, sample_data)

from pvae.evaluate import importance_sampling  # noqa: E402
from pvae.runs.plotting import _plt  # noqa: E402

KS = (1, 3, 10, 30, 100, 300, 1000, 5000)


def main() -> None:
    pyro.set_rng_seed(0)
    W, b, sigma = make_problem()
    x = sample_data(W, b, sigma, 200)
    exact = exact_log_px(x, W, b, sigma).numpy()
    vae = make_vae(W, b, sigma, ShiftedDiagonalGuide(W, b, sigma, shift=0.5, widen=1.5))
    rows = []
    for K in KS:
        res = importance_sampling(vae.model, vae.guide, x, num_samples=K, progress=False,
                                  host=vae)
        err = res.log_px - exact
        rows.append((err.mean(), err.std(ddof=1) / np.sqrt(len(err)), (res.elbo - exact).mean(),
                     res.khat_frac_bad if K > 20 else np.nan))
    err, se, elbo, bad = map(np.array, zip(*rows))

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.errorbar(KS, err, yerr=2 * se, fmt="o-", capsize=3, label="IS estimate (±2 s.e.)")
    ax1.plot(KS, elbo, "s--", color="tab:gray", label="ELBO (mean log-weight)")
    ax1.axhline(0.0, color="k", lw=0.8)
    ax1.set_xscale("log")
    ax1.set_xlabel("K (importance samples per example)")
    ax1.set_ylabel("estimate − exact log p(x) (nats)")
    ax1.legend(fontsize=8)
    ax2.plot(KS, 100 * bad, "o-", color="tab:red")
    ax2.set_xscale("log")
    ax2.set_ylim(0, 100)
    ax2.set_xlabel("K")
    ax2.set_ylabel("% of examples with k-hat > 0.7")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle("linear-Gaussian VAE, poor diagonal guide, 200 examples", fontsize=10)
    out = ROOT / "docs" / "_static" / "evaluation_vs_k.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    for K, row in zip(KS, rows):
        print(f"K={K:5d}  error {row[0]:+.4f} ± {row[1]:.4f}  ELBO {row[2]:+.3f}  "
              f"k-hat>0.7 {row[3]:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
