"""Checkpoints: written atomically, read with one clear error for every way they can fail.

A checkpoint holds the VAE's configuration (enough to rebuild it with
:func:`pvae.vae.build_vae`), its weights, the optimizer state, Pyro's param store, every
RNG state, the epoch, the step and the history, so that a resumed run continues exactly.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from .errors import CheckpointError, ConfigError, PvaeError

FORMAT = "pvae-checkpoint-1"
MODEL_KEYS = ("prior", "guide", "likelihood", "z_dim", "hidden_dims", "x_dim", "activation",
              "num_data", "options")


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, fsync it, rename it over
    ``path``: a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _free_params(model: torch.nn.Module) -> dict:
    """Pyro's param-store state without ``model``'s own parameters (its state dict has them)."""
    state = pyro.get_param_store().get_state()
    own = {name for name, _ in model.named_parameters()}
    return {key: {k: v for k, v in entries.items() if k not in own}
            for key, entries in state.items()}


def save(path: str | Path, *, config: dict, model: torch.nn.Module, optimizer_state: dict,
         epoch: int, step: int, history: list, train_seconds: float) -> None:
    """Write a checkpoint to ``path`` atomically (temporary file, fsync, rename).

    ``param_store`` holds only the ``pyro.param`` s that are not ``model``'s parameters:
    the model's weights are written once, in ``model``.
    """
    payload = {
        "format": FORMAT,
        "config": config,
        "model": model.state_dict(),
        "optimizer": optimizer_state,
        "param_store": _free_params(model),
        "rng": rng_state(),
        "epoch": int(epoch),
        "step": int(step),
        "history": list(history),
        "train_seconds": float(train_seconds),
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; CheckpointError if it is missing, corrupt or not pvae's."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one first (pvae train / "
                              "examples/mnist_svi.py) or point --checkpoint at its checkpoint.pt")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            OSError, AttributeError, ImportError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:120] if str(err) else ''}); delete it and "
                              "train again, or resume from an intact copy") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pvae checkpoint (expected format {FORMAT!r})")
    return payload


def model_config(config: dict) -> dict:
    """The part of a run's configuration that determines the VAE's architecture."""
    return {k: config.get(k) for k in MODEL_KEYS}


def load_vae(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the VAE stored in checkpoint ``path`` on ``device``; returns ``(vae, config)``.

    Clears Pyro's param store first, so that no stale parameter of the same name overrides
    the loaded weights.
    """
    from .vae import build_vae

    payload = load(path, map_location=device)
    config = payload["config"]
    pyro.clear_param_store()
    try:
        mc = model_config(config)
        vae = build_vae(prior=mc["prior"], guide=mc["guide"], likelihood=mc["likelihood"],
                        z_dim=mc["z_dim"], hidden_dims=mc["hidden_dims"], x_dim=mc["x_dim"],
                        activation=mc["activation"], num_data=mc["num_data"],
                        **(mc["options"] or {}))
    except (PvaeError, TypeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} names a model this pvae cannot build ({err}); "
                              "it was written by another version") from err
    load_weights(vae, payload, path)
    return vae.to(device), config


def load_weights(vae: torch.nn.Module, payload: dict, path: str | Path) -> None:
    """Load the checkpoint's weights into ``vae``; CheckpointError when they do not fit."""
    try:
        vae.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit this model ({str(err).splitlines()[0]}"
                              "); it was written for another configuration: start without "
                              "--resume or use the flags it was trained with") from err


def check_compatible(payload: dict, config: dict, path: str | Path) -> None:
    """Raise CheckpointError if ``payload`` was trained with another model configuration."""
    old, new = model_config(payload["config"]), model_config(config)
    diff = {k: (old[k], new[k]) for k in MODEL_KEYS if _norm(old[k]) != _norm(new[k])}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"cannot resume from {path}: {detail}; rerun with the checkpoint's "
                              "flags or without --resume")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def check_writable(out: str | Path) -> Path:
    """Create ``out`` if needed and prove a file can be written there, else ConfigError."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to --out {out} ({err.strerror or err}); choose a "
                          "writable folder") from err
    return out
