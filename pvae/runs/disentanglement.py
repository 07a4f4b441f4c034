"""Disentanglement scores from known factors of variation (docs/uses.rst): the mutual information
gap (MIG; Chen et al. 2018) and the FactorVAE metric (Kim & Mnih 2018), on the posterior means
of images drawn from a factor grid (:data:`pvae.data.registry.FACTOR_GRIDS`)."""
from dataclasses import dataclass

import numpy as np
import torch

from ..model.vae import VAE
from .latents import ACTIVE_THRESHOLD, posterior

BINS = 20


def discretize(codes: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each column of ``codes`` (N, J) cut into ``bins`` equal-width bins over its range."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for j, column in enumerate(codes.T):
        edges = np.histogram_bin_edges(column, bins=bins)
        out[:, j] = np.digitize(column, edges[1:-1])
    return out


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats of two discrete label arrays, from their joint counts."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1.0)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / outer[nz])))


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = BINS) -> tuple[float, np.ndarray]:
    """``(MIG, I / H)``: I(z_j; v_k) / H(v_k) for each coordinate j of the ``codes`` (N, J),
    discretized into ``bins``, and factor k of ``factors`` (N, K); MIG is the mean over k of the
    gap between the largest and the second largest of column k."""
    binned = discretize(np.asarray(codes, float), bins)
    factors = np.asarray(factors)
    mi = np.array([[mutual_information(binned[:, j], factors[:, k])
                    for k in range(factors.shape[1])] for j in range(binned.shape[1])])
    entropy = np.array([mutual_information(f, f) for f in factors.T])
    normalised = mi / np.where(entropy > 0, entropy, np.nan)
    top = np.sort(normalised, axis=0)[::-1]
    gap = top[0] - (top[1] if top.shape[0] > 1 else 0.0)
    return float(np.nanmean(gap)), normalised


@torch.no_grad()
def codes_of(vae: VAE, images: torch.Tensor, batch: int = 1000) -> np.ndarray:
    """The posterior means E_q[z|x] of ``images``, ``batch`` at a time, as float64."""
    parts = [posterior(vae, images[i:i + batch].to(vae.device))[0].cpu()
             for i in range(0, images.shape[0], batch)]
    return torch.cat(parts).double().numpy()


def _images(grid, classes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(grid.render(classes).reshape(len(classes), -1)).float()


def factorvae_votes(vae: VAE, grid, votes: int, batch: int, scale: np.ndarray,
                    active: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``votes`` pairs (coordinate, factor): for a factor k and one value of it, ``batch`` images
    with v_k fixed and the other factors uniform; the coordinate of least variance of the codes
    divided by ``scale``, among the ``active`` ones."""
    sizes, out = np.asarray(grid.SIZES), np.zeros((votes, 2), dtype=np.int64)
    candidates = np.flatnonzero(active)
    for v in range(votes):
        k = rng.integers(len(sizes))
        classes = rng.integers(0, sizes, size=(batch, len(sizes)))
        classes[:, k] = rng.integers(sizes[k])
        codes = codes_of(vae, _images(grid, classes)) / scale
        out[v] = candidates[np.argmin(codes[:, candidates].var(0, ddof=1))], k
    return out


def majority_accuracy(train: np.ndarray, test: np.ndarray, coords: int, factors: int) -> float:
    """Accuracy on ``test`` votes of the classifier coordinate → its most frequent factor among
    the ``train`` votes (a coordinate no train vote chose predicts factor 0)."""
    counts = np.zeros((coords, factors))
    np.add.at(counts, (train[:, 0], train[:, 1]), 1.0)
    return float(np.mean(counts.argmax(1)[test[:, 0]] == test[:, 1]))


@dataclass(frozen=True)
class Disentanglement:
    """MIG and its normalised MI matrix (J coordinates × K ``factors``), the FactorVAE metric
    (None with no active coordinate), and what they were computed from."""

    mig: float
    mi: np.ndarray
    factorvae_score: float | None
    factors: tuple[str, ...]
    active: np.ndarray
    num_codes: int
    votes: tuple[int, int]
    batch: int

    def to_metrics(self) -> dict:
        """The ``metrics_disentangle.json`` entries."""
        return {"mig": self.mig, "factorvae_score": self.factorvae_score,
                "factors": list(self.factors), "mi_normalised": np.round(self.mi, 6).tolist(),
                "factorvae_active_coordinates": np.flatnonzero(self.active).tolist(),
                "num_codes": self.num_codes, "factorvae_train_votes": self.votes[0],
                "factorvae_eval_votes": self.votes[1], "factorvae_batch": self.batch}


def factor_scores(vae: VAE, grid, num_codes: int = 10000, votes: tuple[int, int] = (800, 800),
                    batch: int = 64, seed: int = 0) -> Disentanglement:
    """MIG on the codes of ``num_codes`` images of uniformly drawn factors of ``grid`` (a module
    with ``FACTORS``, ``SIZES`` and ``render``), and the FactorVAE metric: codes scaled by their
    standard deviation over those images, coordinates with Cov_x E_q[z_i] ≤ 0.01 pruned, a
    majority-vote classifier fitted on ``votes[0]`` votes, its accuracy on ``votes[1]`` more."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, np.asarray(grid.SIZES), size=(num_codes, len(grid.SIZES)))
    codes = codes_of(vae, _images(grid, classes))
    score, mi = mig(codes, classes)
    variance = codes.var(0, ddof=1)
    active = variance > ACTIVE_THRESHOLD
    accuracy = None
    if active.any():
        scale = np.sqrt(np.where(active, variance, 1.0))
        train, test = (factorvae_votes(vae, grid, n, batch, scale, active, rng) for n in votes)
        accuracy = majority_accuracy(train, test, codes.shape[1], len(grid.SIZES))
    return Disentanglement(score, mi, accuracy, tuple(grid.FACTORS), active, num_codes,
                           tuple(votes), batch)


@torch.no_grad()
def reconstruction(vae: VAE, x: torch.Tensor, samples: int = 10, batch: int = 500) -> np.ndarray:
    """E_q[log p(x|z)] per image by ``samples`` draws z ~ q(z|x) (nats)."""
    out = []
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch].to(vae.device)
        z = vae.q(xb).sample((samples,))
        out.append(vae.likelihood(z).log_prob(xb).mean(0).double().cpu())
    return torch.cat(out).numpy()
