"""Training state as one immutable value, what :func:`pvae.train.fit` resumes from; only
:mod:`pvae.checkpoint` turns it into bytes and back."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import ConfigError


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's numbers, per image in nats. ``beta`` is the KL weight at the epoch's
    last step (β times the warm-up fraction); ``train_elbo`` is the running mean of the
    training objective's bound at that β (the IWAE bound with ``loss="iwae"``);
    ``test_elbo`` is the plain one-sample ELBO at β = 1; ``lr`` the learning rate after the
    epoch's last step; ``seconds`` and ``cpu_seconds`` the epoch's wall and CPU time in its
    steps (this process's, all its threads; None in checkpoints older than the field)."""

    epoch: int
    step: int
    beta: float
    train_elbo: float
    test_elbo: float | None
    seconds: float
    lr: float | None = None
    cpu_seconds: float | None = None


@dataclass(frozen=True)
class TrainSettings:
    """What shapes the optimisation besides the VAE: a resumed run must use the same.

    ``seed`` seeds each epoch's shuffle (seed·1000003 + epoch); ``beta`` is the VAE's β,
    recorded so that a resumed run cannot silently train towards another one. ``lr_schedule``
    (:mod:`pvae.recipes`) decays ``lr`` over ``schedule_epochs`` (0 for a constant rate).
    """

    batch_size: int
    lr: float
    loss: str
    num_particles: int
    beta: float
    beta_warmup_epochs: float
    binarize: bool
    seed: int
    adam_eps: float = 1e-8
    lr_schedule: str = "constant"
    schedule_epochs: float = 0.0


@dataclass(frozen=True)
class TrainState:
    """Everything a resumed ``fit`` needs besides the VAE's weights: the optimizer's and the
    learning-rate scheduler's ``state_dict()`` and every RNG state among them."""

    epoch: int
    step: int
    history: tuple[EpochRecord, ...]
    train_seconds: float
    settings: TrainSettings
    optimizer: dict
    rng: dict
    scheduler: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain dicts, tuples, numbers and tensors: ``torch.load(weights_only=True)`` reads it.

        Shallow: the optimizer and RNG states are not copied (``dataclasses.asdict`` would
        deep-copy them once per epoch)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(history=[dataclasses.asdict(r) for r in self.history],
                   settings=dataclasses.asdict(self.settings))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        """The inverse of :meth:`to_dict`; KeyError/TypeError when a field is missing or wrong."""
        return cls(epoch=int(d["epoch"]), step=int(d["step"]),
                   history=tuple(EpochRecord(**r) for r in d["history"]),
                   train_seconds=float(d["train_seconds"]),
                   settings=TrainSettings(**d["settings"]),
                   optimizer=dict(d["optimizer"]), rng=dict(d["rng"]),
                   scheduler=dict(d.get("scheduler") or {}))


def train_cpu_seconds(history) -> float | None:
    """The CPU seconds of every epoch of ``history``; None when one was not measured."""
    times = [r.cpu_seconds for r in history]
    return None if None in times else float(sum(times))


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) generators, as plain data."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in mt.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_settings(saved: TrainSettings, asked: TrainSettings, where: str) -> None:
    """ConfigError naming every setting in which a resumed run differs from its checkpoint."""
    diff = [f"{f.name} {getattr(asked, f.name)!r} (the checkpoint has {getattr(saved, f.name)!r})"
            for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(asked, f.name)]
    if diff:
        raise ConfigError(f"cannot resume {where} with changed training settings: "
                          f"{', '.join(diff)}; resume with the checkpoint's settings, or start a "
                          "new run in another --out")
