"""Outlier scores from log p(x) (docs/uses.rst): the raw score −log₂ p(x), the complexity-corrected
score S(x) = −log₂ p(x) − L(x) of Serrà et al. (2020), L(x) the image's PNG length in bits, how
well each separates a scored set from the model's own test set (AUROC, AUPRC, FPR at 95% TPR),
and the built-in shifts of a test set."""
import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError

SHIFTS = ("inverted", "noise", "rotated")
NOISE_STD, NOISE_SEED = 0.3, 0
TPR = 0.95


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, ties given the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    mean = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean, counts)
    return ranks


def auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """P(s⁺ > s⁻) + ½ P(s⁺ = s⁻), a positive's score against a negative's (Mann–Whitney U)."""
    neg, pos = np.asarray(negative, float), np.asarray(positive, float)
    ranks = _ranks(np.concatenate([neg, pos]))[len(neg):]
    return float((ranks.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auprc(negative: np.ndarray, positive: np.ndarray) -> float:
    """Average precision Σ_t (R_t − R_{t−1}) P_t over the distinct thresholds t, highest first
    (the positives are those scored at or above t)."""
    scores = np.concatenate([negative, positive]).astype(float)
    labels = np.concatenate([np.zeros(len(negative)), np.ones(len(positive))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_pos = np.cumsum(labels)[last]
    precision, recall = true_pos / (last + 1), true_pos / len(positive)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(negative: np.ndarray, positive: np.ndarray, tpr: float = TPR) -> float:
    """The fraction of negatives flagged at the highest threshold that flags ``tpr`` of the
    positives (flagged: score ≥ threshold)."""
    pos = np.sort(np.asarray(positive, float))[::-1]
    threshold = pos[max(0, math.ceil(tpr * len(pos)) - 1)]
    return float(np.mean(np.asarray(negative, float) >= threshold))


def complexity_bits(x: torch.Tensor, image_shape) -> np.ndarray:
    """L(x): the length in bits of each image (values in [0, 1]) as an 8-bit grayscale PNG at
    Pillow's strongest compression (level 9), headers included."""
    from PIL import Image

    h, w = (image_shape if len(image_shape) == 2 else (1, image_shape[0]))
    pixels = (x.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    out = np.empty(len(pixels))
    for i, image in enumerate(pixels.reshape(-1, h, w)):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG", compress_level=9)
        out[i] = 8 * buffer.tell()
    return out


def shift(x: torch.Tensor, kind: str, image_shape) -> torch.Tensor:
    """A shift of the grayscale images ``x`` (N, D) in [0, 1]: ``inverted`` 1 − x; ``noise`` x +
    ε clipped to [0, 1], ε ~ N(0, 0.3²) per pixel (seed 0); ``rotated`` by 90° counter-clockwise
    (square images only)."""
    if kind == "inverted":
        return 1.0 - x
    if kind == "noise":
        g = torch.Generator().manual_seed(NOISE_SEED)
        return (x + NOISE_STD * torch.randn(x.shape, generator=g).to(x)).clamp(0.0, 1.0)
    if kind == "rotated":
        if len(image_shape) != 2 or image_shape[0] != image_shape[1]:
            raise DataError(f"--shift rotated turns square images only; these are "
                            f"{'x'.join(map(str, image_shape))}")
        return torch.rot90(x.reshape(-1, *image_shape), 1, (1, 2)).reshape(x.shape[0], -1)
    raise DataError(f"unknown shift {kind!r}; choose one of: {', '.join(SHIFTS)}")


@dataclass(frozen=True)
class OutlierScores:
    """Per image of both sets (``scored`` marks the scored set, the rest is in-distribution):
    ``log_px`` in nats and ``complexity`` L(x) in bits; ``x_dim`` values per image."""

    log_px: np.ndarray
    complexity: np.ndarray
    scored: np.ndarray
    x_dim: int

    @property
    def raw(self) -> np.ndarray:
        """The raw outlier score −log₂ p(x), bits."""
        return -self.log_px / math.log(2)

    @property
    def corrected(self) -> np.ndarray:
        """The complexity-corrected score S(x) = −log₂ p(x) − L(x), bits."""
        return self.raw - self.complexity

    def separation(self, score: np.ndarray, suffix: str = "") -> dict:
        """AUROC, AUPRC and FPR at 95% TPR of ``score`` flagging the scored set."""
        neg, pos = score[~self.scored], score[self.scored]
        return {f"auroc{suffix}": auroc(neg, pos), f"auprc{suffix}": auprc(neg, pos),
                f"fpr_at_95_tpr{suffix}": fpr_at_tpr(neg, pos)}

    def to_metrics(self) -> dict:
        """The separations by the raw and the corrected score, and each set's means."""
        out = {**self.separation(self.raw), **self.separation(self.corrected, "_corrected")}
        for name, rows in (("in", ~self.scored), ("scored", self.scored)):
            out.update({f"n_{name}": int(rows.sum()),
                        f"log_px_{name}": float(self.log_px[rows].mean()),
                        f"bits_per_dim_{name}": float(self.raw[rows].mean() / self.x_dim),
                        f"complexity_bits_{name}": float(self.complexity[rows].mean())})
        return out

    def table(self) -> np.ndarray:
        """One record per image: ``scored`` (0 in-distribution, 1 scored), ``log_px`` (nats),
        ``bits_per_dim`` (−log₂ p(x) / D), ``complexity_bits`` L(x), ``corrected`` S(x)."""
        table = np.zeros(len(self.log_px), dtype=[(name, np.uint8 if name == "scored" else
                                                   np.float64) for name in
                                                  ("scored", "log_px", "bits_per_dim",
                                                   "complexity_bits", "corrected")])
        table["scored"], table["log_px"] = self.scored, self.log_px
        table["bits_per_dim"], table["complexity_bits"] = self.raw / self.x_dim, self.complexity
        table["corrected"] = self.corrected
        return table


def outlier_scores(log_px_in, log_px_scored, x_in: torch.Tensor, x_scored: torch.Tensor,
                   image_shape) -> OutlierScores:
    """:class:`OutlierScores` of the two sets, from their per-image log p(x) (nats) and images."""
    log_px = np.concatenate([np.asarray(log_px_in, float), np.asarray(log_px_scored, float)])
    complexity = np.concatenate([complexity_bits(x, image_shape) for x in (x_in, x_scored)])
    scored = np.r_[np.zeros(len(x_in), bool), np.ones(len(x_scored), bool)]
    return OutlierScores(log_px, complexity, scored, int(x_in.shape[1]))
