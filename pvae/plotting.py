"""Matplotlib figures. matplotlib is imported inside each function (Agg backend), so
importing pvae never needs a display."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _grid(images: torch.Tensor, nrow: int, side: int = 28):
    from torchvision.utils import make_grid

    imgs = images.detach().float().cpu().clamp(0, 1).reshape(-1, 1, side, side)
    return make_grid(imgs, nrow=nrow, padding=2, pad_value=0.0)[0].numpy()


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_reconstructions(x: torch.Tensor, recon: torch.Tensor, path: str | Path,
                         n: int = 16) -> Path:
    """Inputs (top row) above their reconstructions E[x|z], z ~ q(z|x) (bottom row)."""
    plt = _plt()
    n = min(n, x.shape[0])
    both = torch.cat([x[:n], recon[:n]])
    fig, ax = plt.subplots(figsize=(n * 0.6, 1.5))
    ax.imshow(_grid(both, nrow=n), cmap="gray_r", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title("test inputs (top) and reconstructions E[x|z], z ~ q(z|x) (bottom)", fontsize=8)
    return _save(fig, path)


def plot_samples(samples: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """A grid of E[x|z] for z ~ p(z)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(nrow * 0.6, samples.shape[0] / nrow * 0.6 + 0.3))
    ax.imshow(_grid(samples, nrow=nrow), cmap="gray_r", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title("samples: E[x|z], z ~ p(z)", fontsize=8)
    return _save(fig, path)


def principal_components(z: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Project rows of ``z`` onto their first ``k`` principal components; returns the
    projection and the fraction of variance each component explains."""
    zc = z - z.mean(0)
    if z.shape[1] <= k:
        return zc, torch.ones(z.shape[1])
    _, s, v = torch.linalg.svd(zc, full_matrices=False)
    return zc @ v[:k].T, (s[:k] ** 2) / (s**2).sum()


def plot_latent(z: torch.Tensor, labels: torch.Tensor, path: str | Path) -> Path:
    """Posterior means of test images in 2-D (the first two principal components when
    z_dim > 2), coloured by digit."""
    plt = _plt()
    z = z.detach().float().cpu()
    proj, explained = principal_components(z, 2)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if proj.shape[1] == 1:
        proj = torch.cat([proj, torch.zeros_like(proj)], 1)
    sc = ax.scatter(proj[:, 0], proj[:, 1], c=labels.cpu(), cmap="tab10", s=4, alpha=0.7,
                    vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    if z.shape[1] > 2:
        ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}% of variance)")
        ax.set_title(f"posterior means of {len(z)} test images (z_dim = {z.shape[1]})", fontsize=9)
    else:
        ax.set_xlabel("z 1")
        ax.set_ylabel("z 2")
        ax.set_title(f"posterior means of {len(z)} test images", fontsize=9)
    return _save(fig, path)


def plot_elbo_curves(history: Sequence, path: str | Path) -> Path:
    """Train and test ELBO per epoch (nats per image)."""
    plt = _plt()
    epochs = [r.epoch for r in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [r.train_elbo for r in history], "o-", label="train (running mean, at β)")
    test = [(r.epoch, r.test_elbo) for r in history if r.test_elbo is not None]
    if test:
        ax.plot(*zip(*test), "s-", label="test (β = 1)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_evaluation(result, path: str | Path) -> Path:
    """Two histograms over test examples from an :class:`pvae.evaluate.EvalResult`:
    PSIS k-hat with the 0.7 reliability line, and log p(x) − ELBO (≥ 0, the IS gain)."""
    import numpy as np

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    khat = result.khat[~np.isnan(result.khat)]
    if khat.size:
        ax1.hist(khat, bins=40, color="tab:blue", alpha=0.8)
        ax1.set_title(f"{100 * result.khat_frac_bad:.1f}% of examples above 0.7 "
                      f"(max {result.khat_max:.2f})", fontsize=9)
    else:
        ax1.text(0.5, 0.5, f"no k-hat: K = {result.num_samples} is too few\n(needs K > 20)",
                 ha="center", va="center", transform=ax1.transAxes)
    ax1.axvline(0.7, color="tab:red", ls="--", label="0.7: unreliable above")
    ax1.set_xlabel("PSIS k-hat")
    ax1.set_ylabel("test examples")
    ax1.legend(fontsize=8)
    gain = result.log_px - result.elbo
    ax2.hist(gain, bins=40, color="tab:green", alpha=0.8)
    ax2.set_xlabel(f"log p(x) (K = {result.num_samples}) − ELBO (nats)")
    ax2.set_title(f"mean {gain.mean():.2f} nats over {result.n} examples", fontsize=9)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_comparison(rows: Sequence, path: str | Path) -> Path:
    """Test log p(x) per configuration (rows of :func:`pvae.compare.compare`), ±2 s.e. bars;
    the baseline (first row) is a dashed line, configurations that beat it are green."""
    plt = _plt()
    shown = [r for r in rows if r.test_log_px is not None]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(shown) + 1.5))
    for i, r in enumerate(shown):
        color = "tab:green" if r.beats_baseline else ("black" if r is rows[0] else "tab:blue")
        ax.errorbar(r.test_log_px, i, xerr=2 * (r.test_log_px_stderr or 0.0), fmt="o",
                    color=color, capsize=3)
    if shown and shown[0] is rows[0]:
        ax.axvline(rows[0].test_log_px, color="black", ls="--", lw=0.8, label="baseline")
        ax.legend(fontsize=8)
    ax.set_yticks(range(len(shown)), [r.name for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test log p(x), nats per image (bars: ±2 s.e.)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_gap(report, path: str | Path) -> Path:
    """log p(x), L[q*] and L[q] (left, points) and the approximation and amortization gaps
    (right, bars) from a :class:`pvae.amortization.GapReport`, each with ±2 s.e. error bars."""
    plt = _plt()
    s = report.to_json()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    panels = ((left, [("log_px", "log p(x)"), ("elbo_local", "L[q*]"),
                      ("elbo_amortized", "L[q]")], "nats per image", ["C0", "C2", "C1"]),
              (right, [("approximation_gap", "approximation\nlog p(x) − L[q*]"),
                       ("amortization_gap", "amortization\nL[q*] − L[q]")], "gap, nats per image",
               ["C2", "C1"]))
    for ax, bars, label, colors in panels:
        values = [s[k] for k, _ in bars]
        errors = [2 * (s[f"{k}_stderr"] or 0.0) for k, _ in bars]
        if ax is left:
            for i, (v, e, c) in enumerate(zip(values, errors, colors)):
                ax.errorbar([i], [v], yerr=[e], fmt="o", color=c, capsize=4)
        else:
            ax.bar(range(len(bars)), values, yerr=errors, capsize=4, color=colors)
            ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(range(len(bars)), [name for _, name in bars], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    left.set_xlim(-0.5, 2.5)
    fig.subplots_adjust(wspace=0.4)
    fig.suptitle(f"inference gaps on {s['n']} test images (bars: ±2 s.e.)", fontsize=9)
    return _save(fig, path)
