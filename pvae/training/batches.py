"""The minibatches of one training epoch as the arguments of a step: the images (and a local
guide's dataset indices), with labels the labels, and for semi-supervised training a pass over
the unlabelled examples in which every step also takes a batch of labelled ones."""
import math
from typing import Iterator

import pyro
import torch

from ..data.dataset import minibatches
from . import distributed
from .config import TrainConfig

Batch = tuple[tuple, dict]
"""A step's ``(args, kwargs)``: ``step(*args, **kwargs)``."""
LABELLED_STREAM = 500_009
"""Offsets the seed of the labelled examples' order from that of the epoch's pass."""


def epoch_batches(x: torch.Tensor, y: torch.Tensor | None, settings: TrainConfig, epoch: int,
                  supervision: str = "none", amortized: bool = True,
                  ddp: bool = False) -> tuple[Iterator[Batch], int]:
    """The batches of epoch ``epoch`` and their number, in the order the seed fixes. Without
    labels ``(x_b,)`` (a local guide: ``(x_b, idx)``); conditional: ``y=y_b`` too; semi: the
    labelled examples with ``y``, or with unlabelled ones a pass over those, each step also
    given ``labelled=(x_l, y_l)`` and ``labelled_scale`` (:func:`labelled_scale`)."""
    s = settings
    world, rank = (distributed.world_size(), distributed.rank()) if ddp else (1, 0)
    if ddp:
        pyro.set_rng_seed(distributed.epoch_seed(s.seed, epoch, rank))
    gen = torch.Generator().manual_seed(s.seed * 1_000_003 + epoch)
    if supervision != "semi" or y is None:
        steps = _steps(x.shape[0], s.batch_size, world)
        batches = minibatches(x, s.batch_size, gen, binarize=s.binarize, rank=rank,
                              world_size=world)
        if supervision == "none" or y is None:
            return (((xb,) if amortized else (xb, idx), {}) for idx, xb in batches), steps
        return (((xb,), {"y": y.index_select(0, idx)}) for idx, xb in batches), steps
    unlabelled = torch.nonzero(y < 0).flatten()
    labelled = torch.nonzero(y >= 0).flatten()
    main = unlabelled if unlabelled.numel() else labelled
    steps = _steps(main.numel(), s.batch_size, world)
    rows = (ids.flatten() for _, ids in minibatches(main[:, None], s.batch_size, gen,
                                                    binarize=False, rank=rank, world_size=world))
    if not (unlabelled.numel() and labelled.numel()):
        return ((((_images(x, ids, s.binarize),), {} if unlabelled.numel() else
                  {"y": y.index_select(0, ids)}) for ids in rows)), steps
    size = min(s.batch_size, labelled.numel())
    extra = _cycle(labelled, size, s.seed * 1_000_003 + epoch + LABELLED_STREAM, rank, world)
    scale = labelled_scale(labelled.numel(), size, unlabelled.numel(), s.batch_size)

    def semi() -> Iterator[Batch]:
        for ids, more in zip(rows, extra):
            yield (_images(x, ids, s.binarize),), {
                "labelled": (_images(x, more, s.binarize), y.index_select(0, more)),
                "labelled_scale": scale}

    return semi(), steps


def pass_size(n: int, y: torch.Tensor | None, supervision: str) -> int:
    """How many of the ``n`` training examples an epoch passes over: the unlabelled ones in
    semi-supervised training with both kinds, else all."""
    if supervision != "semi" or y is None:
        return n
    unlabelled = int((y < 0).sum())
    return unlabelled if 0 < unlabelled < n else n


def labelled_scale(n_labelled: int, labelled_batch: int, n_unlabelled: int,
                   batch: int) -> float:
    """w = (N_l / B_l) / (N_u / B_u): the weight of a step's labelled batch against its
    unlabelled one, so that an epoch's steps estimate Σ_l J_l + Σ_u J_u (each set's sum) at the
    scale of the pass over the unlabelled examples."""
    return (n_labelled / labelled_batch) / (n_unlabelled / batch)


def _steps(n: int, batch: int, world: int) -> int:
    return math.ceil(math.ceil(n / world) / (batch // world))


def _images(x: torch.Tensor, ids: torch.Tensor, binarize: bool) -> torch.Tensor:
    xb = x.index_select(0, ids)
    return torch.bernoulli(xb) if binarize else xb


def _cycle(rows: torch.Tensor, size: int, seed: int, rank: int,
           world: int) -> Iterator[torch.Tensor]:
    """Endless batches of ``size`` of ``rows``, every row once per pass, a new order per pass."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for _, ids in minibatches(rows[:, None], size, gen, binarize=False, rank=rank,
                                  world_size=world):
            if ids.shape[0] == size // world:
                yield ids.flatten()
