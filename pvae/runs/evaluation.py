"""Scoring a trained VAE with the registered estimators, the same in the main job and in
``pvae evaluate``: each rank scores its shard, the results are gathered in order, and the
values are written before the figure, which may fail only as a warning."""
import dataclasses
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..infer.estimators import ESTIMATORS, EvalConfig
from ..infer.results import Estimate
from ..model.vae import VAE
from ..training import distributed
from .plotting import plot_estimate

log = logging.getLogger(__name__)


def gather_result(result):
    """A per-example result of this rank's :func:`~pvae.training.distributed.shard`, with
    every per-example array (and those of nested results) gathered in the order of the
    examples, on every rank; for one process, ``result`` itself."""
    if distributed.world_size() == 1:
        return result
    changes = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, (torch.Tensor, np.ndarray)):
            changes[f.name] = distributed.gather(value)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = gather_result(value)
    return dataclasses.replace(result, **changes)


def estimate(name: str, vae: VAE, x: torch.Tensor, config: EvalConfig,
             progress: bool = False) -> Estimate:
    """The registered estimator ``name`` on ``x``, sharded across the ranks and gathered."""
    est = ESTIMATORS[name]
    return gather_result(est.run(vae.model, vae.guide, distributed.shard(x), config, vae,
                                 progress))


def plan(method: str) -> list[str]:
    """The estimators a training run with ``method`` runs: importance sampling on the test
    set, then what ``method`` adds (with the methods it needs)."""
    names = ["is"]
    for name in (*ESTIMATORS[method].also, method):
        if name not in names:
            names.append(name)
    return names


def draw(figure: Callable[[], Path], name: str) -> Path | None:
    """Draw one figure; a failure is a warning naming it (the results are already written)."""
    try:
        return figure()
    except Exception as err:  # a figure must never cost a run its results
        log.warning("could not draw %s (%s: %s); the run's results are written", name,
                    type(err).__name__, err)
        return None


def write(name: str, result: Estimate, out: Path) -> list[Path]:
    """The per-example values of ``result`` (``.npy``) and its figure, under the estimator's
    file names; the figure last, and never at the cost of the values."""
    est = ESTIMATORS[name]
    np.save(out / est.per_example, result.values())
    figure = draw(lambda: plot_estimate(result, out / est.figure), est.figure)
    return [out / est.per_example] + ([figure] if figure else [])
