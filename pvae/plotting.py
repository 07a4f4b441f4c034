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
    return make_grid(imgs, nrow=nrow, padding=2, pad_value=1.0)[0].numpy()


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
