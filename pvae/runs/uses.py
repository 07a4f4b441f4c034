"""The jobs of ``pvae score`` and ``pvae disentangle`` on a trained VAE (docs/uses.rst): outlier
scores of another set of images against the model's own test set, and disentanglement scores from
a dataset's known factors."""
from pathlib import Path

import numpy as np
import torch

from ..data.dataset import Dataset, binarize_once
from ..data.registry import FACTOR_GRIDS, DataConfig
from ..errors import ConfigError, DataError
from ..infer.results import stderr
from ..model.vae import VAE
from .config import RunConfig
from .disentanglement import factor_scores, reconstruction
from .evaluation import draw, estimate, format_number, write_json
from .latents import latent_report
from .outliers import outlier_scores, shift as shifted
from .useplots import plot_factor_mi, plot_scores

SCORE_METHODS = ("is", "ais")


def describe(data: DataConfig, shift: str | None = None) -> str:
    """``mnist``, ``mnist (classes 5-9)``, ``mnist, inverted``: a set of test images in words."""
    return (data.dataset + (f" (classes {data.classes})" if data.classes else "")
            + (f", {shift}" if shift else ""))


def scored_images(vae: VAE, data: DataConfig, shift: str | None,
                  image_shape) -> torch.Tensor:
    """The test images of ``data`` (shifted by ``shift`` before the one binarization of a binary
    likelihood); DataError unless they have the model's size."""
    binary = vae.likelihood.data_kind == "binary"
    loaded = data.load(binarize=binary and shift is None)
    x = loaded.test_x
    if x.shape[1] != vae.x_dim:
        raise DataError(f"the images of {describe(data)} are "
                        f"{'x'.join(map(str, loaded.image_shape))} ({x.shape[1]} values) but "
                        "the model was trained on "
                        f"{'x'.join(map(str, image_shape))} ({vae.x_dim}); give images of "
                        "that size")
    if shift is not None:
        x = shifted(x, shift, tuple(image_shape))
        x = binarize_once(x) if binary else x
    vae.check_data(x)
    return x


def check_score(dataset: str | None, classes: str | None, shift: str | None,
                method: str) -> None:
    """ConfigError unless some images are named to score and ``method`` estimates log p(x)."""
    if method not in SCORE_METHODS:
        raise ConfigError(f"score estimates log p(x) with method is or ais, not {method}",
                          "method")
    if dataset is None and classes is None and shift is None:
        raise ConfigError("name the images to score: --dataset NAME|PATH (and --classes), or "
                          "--shift inverted|noise|rotated of the model's own test set")


def score(vae: VAE, config: RunConfig, data: Dataset, out: Path, *, dataset: str | None = None,
          classes: str | None = None, shift: str | None = None, progress: bool = False,
          record: dict | None = None) -> dict:
    """Score the test images of ``dataset`` (default: the model's) of ``classes``, or a
    ``shift`` of them, against the model's own test set ``data.test_x``: log p(x) by the
    registered estimator ``config.eval.method``; writes ``scores.npy``, ``metrics_score.json``
    and ``scores.png`` into ``out``; returns the metrics."""
    check_score(dataset, classes, shift, config.eval.method)
    own = config.data.replace(train_subset=1)
    other = own.replace(dataset=dataset or own.dataset, classes=classes) \
        if dataset or classes else own
    shape = vae.config.image_shape or data.image_shape
    x_in = data.test_x
    x_out = scored_images(vae, other, shift, shape)
    log_px = [estimate(config.eval.method, vae, x.to(vae.device), config.eval, progress).values()
              for x in (x_in, x_out)]
    scores = outlier_scores(*log_px, x_in, x_out, shape)
    np.save(out / "scores.npy", scores.table())
    metrics = {**scores.to_metrics(), "in_distribution": describe(own),
               "scored": describe(other, shift), "shift": shift, "method": config.eval.method,
               "eval_samples": config.eval.eval_samples, **(record or {})}
    write_json(out / "metrics_score.json", metrics)
    draw(lambda: plot_scores((scores.raw[~scores.scored] / scores.x_dim,
                              scores.raw[scores.scored] / scores.x_dim),
                             (scores.corrected[~scores.scored] / scores.x_dim,
                              scores.corrected[scores.scored] / scores.x_dim),
                             (metrics["auroc"], metrics["auroc_corrected"]),
                             (metrics["in_distribution"], metrics["scored"]),
                             out / "scores.png"), "scores.png")
    return metrics


def score_rows(m: dict) -> list[tuple[str, str]]:
    """The summary rows of ``pvae score``."""
    sets = [(m["in_distribution"], "in"), (m["scored"], "scored")]
    rows = [(f"{label} ({m[f'n_{k}']} images)", f"log p(x) {format_number(m[f'log_px_{k}'])}, "
             f"{format_number(m[f'bits_per_dim_{k}'], 4)} bits/dim, L(x) "
             f"{format_number(m[f'complexity_bits_{k}'], 0)} bits") for label, k in sets]
    for key, label in (("auroc", "AUROC"), ("auprc", "AUPRC"), ("fpr_at_95_tpr", "FPR at 95% TPR")):
        rows.append((f"{label}: raw / corrected", f"{m[key]:.3f} / {m[key + '_corrected']:.3f}"))
    return rows


def check_budget(num_codes: int, votes, batch: int) -> None:
    """ConfigError unless the images and votes of :func:`disentangle` are at least 2 each."""
    if min(num_codes, *votes, batch) < 2:
        raise ConfigError("num_codes, votes and vote_batch must be at least 2", "num_codes",
                          "votes", "vote_batch")


def disentangle(vae: VAE, config: RunConfig, data: Dataset, out: Path, *, num_codes: int,
                votes: tuple[int, int], batch: int, record: dict | None = None) -> dict:
    """MIG, the FactorVAE metric (:func:`~pvae.runs.disentanglement.factor_scores`), the
    reconstruction term E_q[log p(x|z)] and the KL of each coordinate on the test images;
    writes ``metrics_disentangle.json`` and ``disentangle.png`` into ``out``."""
    check_budget(num_codes, votes, batch)
    grid = FACTOR_GRIDS.get(config.data.dataset)
    if grid is None:
        raise ConfigError(f"disentangle needs a dataset with known factors ("
                          f"{', '.join(FACTOR_GRIDS)}); this model was trained on "
                          f"{config.data.dataset}")
    result = factor_scores(vae, grid, num_codes, votes, batch, config.train.seed or 0)
    recon = reconstruction(vae, data.test_x)
    report = latent_report(vae, data.test_x)
    metrics = {**result.to_metrics(), "reconstruction": float(recon.mean()),
               "reconstruction_stderr": stderr(recon), "n_test": len(recon),
               "kl": None if report.kl is None else float(report.kl.sum()),
               **report.to_metrics(), "beta": vae.beta, **(record or {})}
    write_json(out / "metrics_disentangle.json", metrics)
    draw(lambda: plot_factor_mi(result.mi, result.factors, result.mig, out / "disentangle.png"),
         "disentangle.png")
    return metrics


def disentangle_rows(m: dict) -> list[tuple[str, str]]:
    """The summary rows of ``pvae disentangle``."""
    return [("MIG", f"{m['mig']:.3f} ({m['num_codes']} images)"),
            ("FactorVAE metric", format_number(m["factorvae_score"], 3)),
            ("reconstruction E_q[log p(x|z)]", f"{m['reconstruction']:.2f} ± "
                                               f"{m['reconstruction_stderr']:.2f}"),
            ("KL to the prior", format_number(m["kl"])),
            ("active units", f"{m['active_units']} of {len(m['mi_normalised'])}")]
