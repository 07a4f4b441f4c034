"""Figures of a trained model's uses: latent traversals and the KL of each coordinate, outlier
score histograms, and the mutual information between latent coordinates and known factors."""
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .plotting import image_hw, pyplot, save_figure


def plot_traversals(images: torch.Tensor, coords: Sequence[int], kl, path: str | Path,
                    image_shape: Sequence[int] | None = None, total: int | None = None) -> Path:
    """Rows of decoded images (one row per latent coordinate in ``coords``, its KL ``kl[i]`` in
    nats beside it when known), each row a sweep of that coordinate, the others held."""
    h, w = image_hw(images.shape[-1], image_shape)
    rows = len(coords)
    steps = images.shape[0] // rows
    grid = images.detach().float().cpu().clamp(0, 1).reshape(rows, steps, h, w)
    grid = torch.nn.functional.pad(grid, (1, 1, 1, 1), value=0.0)
    grid = grid.permute(0, 2, 1, 3).reshape(rows * (h + 2), steps * (w + 2)).numpy()
    fig, ax = pyplot().subplots(figsize=(0.55 * steps + 1.2, 0.55 * rows + 0.6))
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1)
    ax.set_yticks([(h + 2) * (r + 0.5) for r in range(rows)],
                  [f"z{i}" + ("" if kl is None else f"  {float(kl[i]):.2f}")
                   for i in map(int, coords)], fontsize=7)
    ax.set_xticks([(w + 2) * (c + 0.5) for c in range(steps)],
                  [f"{t:+.1f}" for t in np.linspace(-3, 3, steps)], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel("posterior mean + t · prior s.d. (one coordinate per row, the others held)",
                  fontsize=8)
    shown = f"{rows} of {total}" if total and total > rows else f"all {rows}"
    ax.set_title(f"latent traversals: {shown} coordinates"
                 + (", by KL (nats) to the prior" if kl is not None else
                    ", by variance of the posterior mean"), fontsize=8)
    return save_figure(fig, path)


def plot_kl_per_dim(kl: torch.Tensor, variance: torch.Tensor, threshold: float,
                    path: str | Path) -> Path:
    """The KL of each latent coordinate to the prior, largest first; active units (Cov_x E_q[z_i]
    above ``threshold``) in blue, the others grey."""
    order = torch.argsort(kl, descending=True)
    active = (variance[order] > threshold).numpy()
    fig, ax = pyplot().subplots(figsize=(max(4.0, 0.12 * len(kl) + 1.5), 3.0))
    ax.bar(range(len(kl)), kl[order].numpy(), color=np.where(active, "tab:blue", "tab:gray"))
    ax.set_xticks(range(len(kl)), [str(i) for i in order.tolist()], fontsize=5, rotation=90)
    ax.set(xlabel="latent coordinate", ylabel="KL(q(z_i|x) || p(z_i)), nats")
    ax.set_title(f"{int(active.sum())} active units of {len(kl)} (blue: Cov_x E_q[z_i] > "
                 f"{threshold:g}); total KL {float(kl.sum()):.2f} nats", fontsize=8)
    return save_figure(fig, path, grid="y")


def plot_scores(raw: tuple[np.ndarray, np.ndarray], corrected: tuple[np.ndarray, np.ndarray],
                aurocs: tuple[float, float], names: tuple[str, str], path: str | Path) -> Path:
    """Histograms of the raw score −log₂ p(x) / D (left) and of the complexity-corrected score
    S(x) / D (right) of the in-distribution set and the scored set, with each AUROC."""
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 3.4))
    titles = ("raw: −log₂ p(x), bits per dimension", "corrected: S(x) = −log₂ p(x) − L(x), "
              "bits per dimension")
    for ax, pair, auroc, title in zip(axes, (raw, corrected), aurocs, titles):
        bins = np.histogram_bin_edges(np.concatenate(pair), bins=50)
        for values, name, color in zip(pair, names, ("tab:blue", "tab:red")):
            ax.hist(values, bins=bins, alpha=0.55, color=color, label=f"{name} ({len(values)})")
        ax.set_xlabel(title, fontsize=8)
        ax.set_title(f"AUROC {auroc:.3f}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("images")
    return save_figure(fig, path, grid="y")


def plot_factor_mi(mi: np.ndarray, factors: Sequence[str], mig: float, path: str | Path) -> Path:
    """The normalised mutual information I(z_j; v_k) / H(v_k) of each latent coordinate j (rows)
    and each factor k (columns)."""
    fig, ax = pyplot().subplots(figsize=(1.1 * len(factors) + 2.0, 0.22 * mi.shape[0] + 1.2))
    image = ax.imshow(mi, cmap="viridis", vmin=0, vmax=max(float(mi.max()), 1e-6),
                      aspect="auto")
    fig.colorbar(image, ax=ax, label="I(z_j; v_k) / H(v_k)")
    ax.set_xticks(range(len(factors)), factors, fontsize=8, rotation=30)
    ax.set_yticks(range(mi.shape[0]), [f"z{j}" for j in range(mi.shape[0])], fontsize=6)
    ax.set_title(f"mutual information of latents and factors; MIG {mig:.3f}", fontsize=9)
    return save_figure(fig, path)
