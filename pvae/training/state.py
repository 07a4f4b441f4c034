"""Training state as one immutable value, what :func:`pvae.training.loop.fit` resumes from;
only :mod:`pvae.training.checkpoint` turns it into bytes and back."""
import dataclasses
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's numbers, per image in nats: ``beta`` the KL weight at its last step,
    ``train_elbo`` the running mean of the objective's bound at that β, ``test_elbo`` a one-sample
    ELBO at β = 1, ``lr`` the final rate, ``seconds``/``cpu_seconds`` its wall and CPU time."""

    epoch: int
    step: int
    beta: float
    train_elbo: float
    test_elbo: float | None
    seconds: float
    lr: float | None = None
    cpu_seconds: float | None = None


@dataclass(frozen=True)
class TrainState:
    """What a resumed ``fit`` needs besides the weights and the configuration: the optimizer's and
    scheduler's states, every RNG's, and what the training data were (:func:`data_identity`)."""

    epoch: int
    step: int
    history: tuple[EpochRecord, ...]
    train_seconds: float
    optimizer: dict
    rng: dict
    scheduler: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain data ``torch.load(weights_only=True)`` reads, shallow (nothing deep-copied)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(history=[dataclasses.asdict(r) for r in self.history])
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        """The inverse of :meth:`to_dict` (a ``settings`` entry of format 2 is left out);
        KeyError/TypeError when a field is missing or wrong."""
        return cls(epoch=int(d["epoch"]), step=int(d["step"]),
                   history=tuple(EpochRecord(**r) for r in d["history"]),
                   train_seconds=float(d["train_seconds"]),
                   optimizer=dict(d["optimizer"]), rng=dict(d["rng"]),
                   data=dict(d.get("data") or {}),
                   scheduler=dict(d.get("scheduler") or {}))


def train_cpu_seconds(history) -> float | None:
    """The CPU seconds of every epoch of ``history``; None when one was not measured."""
    times = [r.cpu_seconds for r in history]
    return None if None in times else float(sum(times))


def data_identity(x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, Any]:
    """What a training set is: its shape and the SHA-256 of its values (as float32 bytes, so
    the same images in another dtype or on another device are the same data), and of its
    labels ``y`` (as int64 bytes) when it has them."""
    values = x.detach().to("cpu", torch.float32).contiguous().numpy()
    out = {"shape": list(values.shape), "sha256": hashlib.sha256(values.tobytes()).hexdigest()}
    if y is not None:
        labels = y.detach().to("cpu", torch.int64).contiguous().numpy()
        out["labels_sha256"] = hashlib.sha256(labels.tobytes()).hexdigest()
    return out


def data_difference(saved: dict, now: dict) -> str | None:
    """How the training data ``now`` differ from those a checkpoint recorded (None: the same,
    or nothing was recorded)."""
    if not saved or saved == now:
        return None
    if saved["shape"] != now["shape"]:
        return f"the checkpoint trained on {saved['shape'][0]} examples of shape " \
               f"{saved['shape'][1:]}, these are {now['shape'][0]} of shape {now['shape'][1:]}"
    if saved["sha256"] == now["sha256"]:
        return "the images are the same but their labels differ (other labels, or another " \
               "--labelled choice)"
    return "the images have the same shape but other values (a changed file or subset)"


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
