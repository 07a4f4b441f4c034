"""Matplotlib figures; matplotlib (Agg backend) is imported only when one is drawn."""
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..infer.annealing import AISResult, BDMCResult
from ..infer.importance import EvalResult


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, grid: str | None = None) -> Path:
    for ax in fig.axes if grid else ():
        ax.grid(alpha=0.3, axis=grid)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use."""
    return _plt()


def save_figure(fig, path: str | Path, grid: str | None = None) -> Path:
    """Save ``fig`` to ``path`` (120 dpi) and close it; ``grid``: grid lines on that axis."""
    return _save(fig, path, grid)


def image_hw(x_dim: int, image_shape: Sequence[int] | None = None) -> tuple[int, int]:
    """How to draw one example of ``x_dim`` values: ``image_shape`` (H, W), else a square
    if ``x_dim`` is a square number, else one row of ``x_dim`` pixels."""
    if image_shape is not None and len(image_shape) == 2:
        return int(image_shape[0]), int(image_shape[1])
    side = int(round(x_dim ** 0.5))
    return (side, side) if side * side == x_dim else (1, int(x_dim))


def _image_grid(images: torch.Tensor, nrow: int, title: str, path: str | Path,
                figsize: tuple[float, float], image_shape: Sequence[int] | None) -> Path:
    from torchvision.utils import make_grid

    fig, ax = _plt().subplots(figsize=figsize)
    hw = image_hw(images.shape[-1], image_shape)
    grid = make_grid(images.detach().float().cpu().clamp(0, 1).reshape(-1, 1, *hw),
                     nrow=nrow, padding=2, pad_value=0.0)[0].numpy()
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    return _save(fig, path)


def plot_reconstructions(x: torch.Tensor, recon: torch.Tensor, path: str | Path,
                         n: int = 16, image_shape: Sequence[int] | None = None) -> Path:
    """Inputs (top row) above their reconstructions E[x|z], z ~ q(z|x) (bottom row), each
    drawn as an image of ``image_shape`` (see :func:`image_hw`)."""
    n = min(n, x.shape[0])
    return _image_grid(torch.cat([x[:n], recon[:n]]), n, "test inputs (top) and "
                       "reconstructions E[x|z], z ~ q(z|x) (bottom)", path, (n * 0.6, 1.5),
                       image_shape)


def plot_samples(samples: torch.Tensor, path: str | Path, nrow: int = 8,
                 image_shape: Sequence[int] | None = None) -> Path:
    """A grid of E[x|z] for z ~ p(z), each drawn as an image of ``image_shape``."""
    return _image_grid(samples, nrow, "samples: E[x|z], z ~ p(z)", path,
                       (nrow * 0.6, samples.shape[0] / nrow * 0.6 + 0.3), image_shape)


def plot_conditional_samples(images: torch.Tensor, num_classes: int, path: str | Path,
                             image_shape: Sequence[int] | None = None) -> Path:
    """E[x|z, y] with one row per class y and the same z down each column."""
    n = images.shape[0] // num_classes
    return _image_grid(images, n, f"E[x|z, y]: one row per class y = 0 … {num_classes - 1}, one "
                       "z ~ p(z) per column", path, (n * 0.6, num_classes * 0.6 + 0.3),
                       image_shape)


def principal_components(z: torch.Tensor) -> tuple[torch.Tensor, list[float | None]]:
    """The centred rows of ``z`` (n, d), d > 2, on their first two principal components, and
    the share of the variance each explains (None where there is no variance to share, and
    zeros for a component that n points do not have)."""
    proj = z - z.mean(0)
    _, s, v = torch.linalg.svd(proj, full_matrices=False)
    axes = torch.zeros(2, z.shape[1], dtype=z.dtype)
    axes[:min(2, v.shape[0])] = v[:2]
    total = float((s**2).sum())
    shares = [float(s[i] ** 2) / total if i < len(s) and total > 0 else None for i in range(2)]
    return proj @ axes.T, shares


def plot_latent(z: torch.Tensor, labels: torch.Tensor | None, path: str | Path,
                label_name: str = "class") -> Path:
    """Posterior means of test images in 2-D (first 2 principal components), coloured by their
    label (``label_name``: "digit" for MNIST; the first factor of labels that are factors, one
    column each) when they have more than one."""
    z = z.detach().float().cpu()
    proj = z - z.mean(0)
    title = f"posterior means of {len(z)} test images"
    axis_labels = ["z 1", "z 2"]
    if z.shape[1] > 2:
        proj, shares = principal_components(z)
        axis_labels = [f"PC {i + 1}" + (f" ({100 * share:.0f}% of variance)" if share is not None
                                        else "") for i, share in enumerate(shares)]
        title += f" (z_dim = {z.shape[1]})"
    elif z.shape[1] == 1:
        proj = torch.cat([proj, torch.zeros_like(proj)], 1)
    fig, ax = _plt().subplots(figsize=(5.5, 4.5))
    labels = None if labels is None else (labels[:, 0] if labels.dim() == 2 else labels).cpu()
    if labels is not None and len(labels) and int(labels.min()) != int(labels.max()):
        top = int(labels.max())
        sc = ax.scatter(proj[:, 0], proj[:, 1], c=labels, cmap="tab10" if top < 10 else "turbo",
                        s=4, alpha=0.7, vmin=-0.5, vmax=max(9, top) + 0.5)
        fig.colorbar(sc, ax=ax, ticks=range(0, max(9, top) + 1, 1 + top // 10), label=label_name)
    else:
        ax.scatter(proj[:, 0], proj[:, 1], s=4, alpha=0.7)
        title += " (one label for all: one colour)"
    ax.set(xlabel=axis_labels[0], ylabel=axis_labels[1])
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_elbo_curves(history: Sequence, path: str | Path) -> Path:
    """Train and test ELBO per epoch (nats per image)."""
    fig, ax = _plt().subplots(figsize=(5, 3.5))
    ax.plot([r.epoch for r in history], [r.train_elbo for r in history], "o-",
            label="train (running mean, at β)")
    test = [(r.epoch, r.test_elbo) for r in history if r.test_elbo is not None]
    if test:
        ax.plot(*zip(*test), "s-", label="test (β = 1)")
    ax.set(xlabel="epoch", ylabel="ELBO (nats per image)")
    ax.legend()
    return _save(fig, path, grid="both")


def plot_evaluation(result, path: str | Path) -> Path:
    """Histograms over test examples of PSIS k-hat (0.7: unreliable) and log p(x) − ELBO."""
    fig, (ax1, ax2) = _plt().subplots(1, 2, figsize=(9, 3.5))
    khat = result.khat[~np.isnan(result.khat)]
    if khat.size:
        ax1.hist(khat, bins=40, color="tab:blue", alpha=0.8)
        ax1.set_title(f"{100 * result.khat_frac_bad:.1f}% of examples above 0.7 "
                      f"(max {result.khat_max:.2f})", fontsize=9)
    else:
        ax1.text(0.5, 0.5, f"no k-hat: K = {result.num_samples} is too few\n(needs K > 20)",
                 ha="center", va="center", transform=ax1.transAxes)
    ax1.axvline(0.7, color="tab:red", ls="--", label="0.7: unreliable above")
    ax1.set(xlabel="PSIS k-hat", ylabel="test examples")
    ax1.legend(fontsize=8)
    gain = result.log_px - result.elbo
    ax2.hist(gain, bins=40, color="tab:green", alpha=0.8)
    ax2.set_xlabel(f"log p(x) (K = {result.num_samples}) − ELBO (nats)")
    ax2.set_title(f"mean {gain.mean():.2f} nats over {result.n} examples", fontsize=9)
    return _save(fig, path, grid="both")


def plot_ais(result, path: str | Path) -> Path:
    """AIS (:class:`pvae.infer.annealing.AISResult`): histograms over examples of the HMC
    acceptance and of the s.e. of log p̂(x) across chains. BDMC
    (:class:`~pvae.infer.annealing.BDMCResult`): upper against lower bound per simulated
    example, and the histogram of the gap."""
    fig, (ax1, ax2) = _plt().subplots(1, 2, figsize=(9, 3.5))
    if isinstance(result, BDMCResult):
        lo, up, gap = (t.numpy() for t in (result.lower, result.upper, result.gap))
        ax1.scatter(lo, up, s=6, alpha=0.6)
        span = [min(lo.min(), up.min()), max(lo.max(), up.max())]
        ax1.plot(span, span, color="tab:red", lw=0.8, label="upper = lower")
        ax1.set(xlabel="lower bound (forward AIS)", ylabel="upper bound (reverse AIS)")
        ax1.legend(fontsize=8)
        ax2.hist(gap, bins=40, color="tab:purple", alpha=0.8)
        ax2.set_xlabel("BDMC gap: upper − lower (nats)")
        ax2.set_title(f"mean {gap.mean():.3f} nats over {len(gap)} simulated examples, "
                      f"T = {result.forward.num_steps}", fontsize=9)
        return _save(fig, path, grid="both")
    ax1.hist(result.accept_rate.numpy(), bins=40, color="tab:blue", alpha=0.8)
    ax1.set(xlabel="mean HMC acceptance probability", ylabel="examples")
    ax1.set_title(f"T = {result.num_steps}, C = {result.num_chains}, L = {result.num_leapfrog}",
                  fontsize=9)
    se = result.chain_stderr.numpy()
    if np.isfinite(se).any():
        ax2.hist(se[np.isfinite(se)], bins=40, color="tab:green", alpha=0.8)
    else:
        ax2.text(0.5, 0.5, f"n/a: C = {result.num_chains} chain per example has no spread\n"
                 "(needs C >= 2)", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("s.e. of log p̂(x) across chains (nats)")
    ax2.set_title(f"mean log p(x) {result.log_px_mean:.2f} ± {result.log_px_stderr:.2f} over "
                  f"{result.n} examples", fontsize=9)
    return _save(fig, path, grid="both")


def plot_estimate(result, path: str | Path) -> Path:
    """The figure of an estimator's result: :func:`plot_evaluation` for importance sampling,
    :func:`plot_ais` for AIS and BDMC, else a histogram of its per-example values."""
    if isinstance(result, EvalResult):
        return plot_evaluation(result, path)
    if isinstance(result, (AISResult, BDMCResult)):
        return plot_ais(result, path)
    fig, ax = _plt().subplots(figsize=(5, 3.5))
    values = result.values()
    ax.hist(values, bins=40, color="tab:blue", alpha=0.8)
    ax.set(xlabel=f"{result.MAIN} (nats)", ylabel="examples")
    ax.set_title(f"mean {values.mean():.2f} over {len(values)} examples", fontsize=9)
    return _save(fig, path, grid="both")


def plot_comparison(rows: Sequence, path: str | Path) -> Path:
    """Test log p(x) ± 2 s.e. per compared configuration; baseline dashed, better ones green."""
    shown = [r for r in rows if r.test_log_px is not None]
    fig, ax = _plt().subplots(figsize=(6.5, 0.45 * len(shown) + 1.5))
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
    return _save(fig, path, grid="x")


def plot_gap(report, path: str | Path) -> Path:
    """log p(x), L[q*], L[q] (left) and the two gaps (right) of a GapReport, ±2 s.e. bars."""
    s = report.to_metrics()

    def bars(keys):  # an undefined value (no encoder: no L[q]) is left out of the figure
        return ([math.nan if s[k] is None else s[k] for k in keys],
                [2 * (s[f"{k}_stderr"] or 0.0) for k in keys])

    fig, (left, right) = _plt().subplots(1, 2, figsize=(8, 3.2))
    values, errors = bars(("log_px", "elbo_local", "elbo_amortized"))
    for i, (v, e, c) in enumerate(zip(values, errors, ("C0", "C2", "C1"))):
        left.errorbar([i], [v], yerr=[e], fmt="o", color=c, capsize=4)
    left.set_xticks(range(3), ["log p(x)", "L[q*]", "L[q]"], fontsize=8)
    left.set(xlim=(-0.5, 2.5), ylabel="nats per image")
    values, errors = bars(("approximation_gap", "amortization_gap"))
    right.bar(range(2), values, yerr=errors, capsize=4, color=["C2", "C1"])
    right.axhline(0.0, color="k", lw=0.8)
    right.set_xticks(range(2), ["approximation\nlog p(x) − L[q*]",
                                "amortization\nL[q*] − L[q]"], fontsize=8)
    right.set_ylabel("gap, nats per image")
    fig.subplots_adjust(wspace=0.4)
    fig.suptitle(f"inference gaps on {s['n']} test images (bars: ±2 s.e.)", fontsize=9)
    return _save(fig, path, grid="y")
