"""Checkpoints: data, never code; checked before they are read; written atomically.

A checkpoint file is three parts::

    pvae checkpoint\\n
    {"format": 3, "length": N, "sha256": "<hex>"}\\n
    <N bytes: torch.save of {"config": the run's configuration, flat, as in metrics.json,
                             "weights": state dict, "state": TrainState dict or None}>

The payload (tensors, numbers, strings, lists, dicts) is read with
``torch.load(weights_only=True)`` after its length and SHA-256 are checked: a shared file
cannot run code and a damaged one is refused, always as one
:class:`~pvae.errors.CheckpointError`. Format 2 (pvae 0.2) loads for evaluation, not resume.
"""
import hashlib
import io
import json
import pickletools
import zipfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch

from ..checks import as_dict, from_dict
from ..errors import CheckpointError, PvaeError
from ..files import atomic_write
from ..model.config import VAEConfig
from ..model.vae import VAE
from .config import TrainConfig
from .distributed import resolve_device
from .state import TrainState

MAGIC = b"pvae checkpoint\n"
FORMAT = 3
READABLE = (2, 3)
PREVIOUS_FORMAT = "pvae-checkpoint-1"
HEADER_LIMIT = 4096


class Checkpoint(NamedTuple):
    """A checkpoint: the run's flat configuration as written, its ``model`` and ``train``
    sections read from it (None where absent: not from ``fit``, or format 2), the weights and
    the training state."""

    config: dict[str, Any]
    model: VAEConfig | None
    train: TrainConfig | None
    weights: dict[str, torch.Tensor]
    state: TrainState | None


def save(path: str | Path, vae: VAE, state: TrainState | None = None,
         settings: TrainConfig | None = None, record: Mapping[str, Any] | None = None) -> None:
    """Write the checkpoint of ``vae``, its training ``settings`` and ``state`` to ``path``
    atomically, with ``record``, the rest of the run's flat configuration."""
    config = {**(record or {}), **vae.config.to_dict(),
              **(as_dict(settings) if settings is not None else {})}
    payload = {"config": config, "weights": vae.state_dict(),
               "state": state.to_dict() if state is not None else None}
    buf = io.BytesIO()
    torch.save(payload, buf)
    blob = buf.getvalue()
    header = json.dumps({"format": FORMAT, "length": len(blob),
                         "sha256": hashlib.sha256(blob).hexdigest()}).encode()
    atomic_write(path, MAGIC + header + b"\n" + blob)


def _parse(payload: Any, fmt: int) -> Checkpoint:
    """The :class:`Checkpoint` of a payload of format ``fmt`` (KeyError, TypeError... if not)."""
    if not isinstance(payload, dict):
        raise TypeError(f"the payload is a {type(payload).__name__}, not a dict")
    keys = ("config", "weights", "state") if fmt == FORMAT else ("vae", "beta", "weights", "train")
    missing = [k for k in keys if k not in payload]
    if missing:
        raise KeyError(f"the payload lacks {missing}")
    weights = payload["weights"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor)
                                                for v in weights.values()):
        raise TypeError("its weights are not a dict of tensors")
    if fmt == FORMAT:
        config = dict(payload["config"])
        train = from_dict(TrainConfig, config, strict=False) if "epochs" in config else None
        state = TrainState.from_dict(payload["state"]) if payload["state"] is not None else None
        return Checkpoint(config, VAEConfig.from_dict(config, strict=False), train, weights, state)
    old = payload["vae"]
    config = {"beta": float(payload["beta"])}
    model = None
    if old is not None:
        config["dataset"] = old.get("dataset") or "mnist"
        model = VAEConfig.from_dict({**{k: v for k, v in old.items() if k != "dataset"},
                                     "beta": config["beta"]})
        config.update(model.to_dict())
    state = TrainState.from_dict(payload["train"]) if payload["train"] is not None else None
    return Checkpoint(config, model, None, weights, state)


def read(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Check and read a checkpoint; CheckpointError if it is missing, damaged or not pvae's."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one first (pvae train / "
                              "examples/mnist_svi.py) or point --checkpoint at its checkpoint.pt")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from err
    fmt, blob = _checked_payload(raw, path)
    try:
        payload = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} passed its checksum but its payload cannot be "
                              f"read ({type(err).__name__}); it was written by an incompatible "
                              "version of pvae or torch") from err
    try:
        return _parse(payload, fmt)
    except (PvaeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is not one this pvae can use ({err}); it was "
                              "written by another version or altered") from err


def _checked_payload(raw: bytes, path: Path) -> tuple[int, bytes]:
    if not raw.startswith(MAGIC):
        raise CheckpointError(_what_it_is(raw, path))
    end = raw.find(b"\n", len(MAGIC), len(MAGIC) + HEADER_LIMIT)
    try:
        header = json.loads(raw[len(MAGIC):end]) if end > 0 else None
        fmt, length, digest = header["format"], int(header["length"]), str(header["sha256"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} has a damaged header; delete it and train "
                              "again, or use an intact copy") from None
    if fmt not in READABLE:
        raise CheckpointError(f"checkpoint {path} is in format {fmt!r}, this pvae reads formats "
                              f"{', '.join(map(str, READABLE))}; use the pvae version that "
                              "wrote it")
    blob = raw[end + 1:]
    if len(blob) != length:
        raise CheckpointError(f"checkpoint {path} is truncated or padded ({len(blob)} payload "
                              f"bytes, expected {length}); delete it and train again, or use an "
                              "intact copy")
    if hashlib.sha256(blob).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is damaged (its SHA-256 does not match its "
                              "header); delete it and train again, or use an intact copy")
    return fmt, blob


def _what_it_is(raw: bytes, path: Path) -> str:
    """The message for a file without pvae's magic: an old pvae checkpoint, or something else."""
    if raw.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                strings = {arg for _, arg, _ in pickletools.genops(zf.read(name))
                           if isinstance(arg, str)}
        except Exception:
            strings = set()
        if PREVIOUS_FORMAT in strings:
            return (f"{path} is a checkpoint of pvae 0.1 (format {PREVIOUS_FORMAT!r}), a pickle "
                    "that can run code when it is read; this pvae does not open it. Retrain "
                    "the run (its metrics.json records every flag)")
        return (f"{path} is a torch file but not a pvae checkpoint; pvae reads only the "
                "checkpoint.pt that pvae train / fit(out_dir=...) write")
    return f"{path} is not a pvae checkpoint (it does not start with pvae's header)"


def weights_mismatch(vae: VAE, weights: dict[str, torch.Tensor]) -> str | None:
    """The first way ``weights`` do not fit ``vae``'s modules (None: they fit)."""
    own = vae.state_dict()
    for name, value in own.items():
        if name not in weights:
            return f"it has no {name}, which this model has"
        if tuple(weights[name].shape) != tuple(value.shape):
            return (f"its {name} has shape {tuple(weights[name].shape)} and this model's "
                    f"{tuple(value.shape)}")
    extra = [name for name in weights if name not in own]
    return f"its {extra[0]} has no place in this model" if extra else None


def restore_weights(vae: VAE, weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """Copy ``weights`` into ``vae``; CheckpointError naming the first parameter that does not
    fit its modules."""
    mismatch = weights_mismatch(vae, weights)
    if mismatch:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {mismatch}; it was "
                              "written for another configuration (pvae.load rebuilds the "
                              "checkpoint's own model when no vae is given)")
    vae.load_state_dict(weights)


def load(path: str | Path, device: str | torch.device = "cpu", vae: VAE | None = None) -> VAE:
    """The VAE of checkpoint ``path`` on ``device`` (ConfigError for a device torch does not
    see), rebuilt from its configuration or loaded into ``vae`` (needed for a VAE of one's own
    modules)."""
    device = resolve_device(str(device))
    return to_vae(read(path), path, device, vae)


def to_vae(ckpt: Checkpoint, path: str | Path, device: str | torch.device = "cpu",
           vae: VAE | None = None) -> VAE:
    """:func:`load` for a checkpoint already :func:`read` from ``path``."""
    if vae is None:
        if ckpt.model is None or ckpt.model.custom:
            raise CheckpointError(f"checkpoint {path} holds a VAE assembled from custom modules "
                                  "(no configuration to rebuild it from); build it again in "
                                  "Python and pass it: pvae.load(path, vae=my_vae)")
        with torch.random.fork_rng(devices=[]):
            vae = VAE.from_config(ckpt.model)
    else:
        vae.beta = ckpt.config["beta"]
    restore_weights(vae, ckpt.weights, path)
    return vae.to(device)
