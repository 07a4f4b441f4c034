"""``fit()``: stochastic variational inference for a VAE, with checkpoints and a NaN guard.

One epoch is one shuffled pass over the training set in minibatches (binarized afresh per
batch for binary likelihoods), one ``SVI.step`` per batch with Adam. After each epoch the
test ELBO is computed, the parameters are checked to be finite and a checkpoint is written
atomically, so an interrupted run loses at most one epoch and ``resume=True`` continues
to the same parameters as an uninterrupted run.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .data import minibatches
from .errors import ConfigError, DataError, DivergenceError
from .objectives import beta_at, make_loss
from .vae import VAE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's numbers, per image in nats. ``train_elbo`` is the running mean of the
    training objective's ELBO (at that epoch's β); ``test_elbo`` is the plain ELBO (β = 1)."""

    epoch: int
    step: int
    beta: float
    train_elbo: float
    test_elbo: float | None
    seconds: float


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` returns: the per-epoch history, total steps and optimisation wall time."""

    history: tuple[EpochRecord, ...]
    epochs: int
    steps: int
    train_seconds: float
    checkpoint: Path | None


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; "
                          "use --device cpu or auto")
    return torch.device(device)


@torch.no_grad()
def elbo_per_example_mean(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> float:
    """The mean over ``x`` of a one-sample ELBO estimate at β = 1 (nats per image)."""
    elbo, beta, total = Trace_ELBO(), vae.beta, 0.0
    vae.beta = 1.0
    try:
        for start in range(0, x.shape[0], batch_size):
            total -= elbo.loss(vae.model, vae.guide, x[start:start + batch_size])
    finally:
        vae.beta = beta
    return total / x.shape[0]


def _check_finite(vae: VAE, epoch: int, step: int, where: str, good: Path | None) -> None:
    bad = [n for n, p in vae.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        _diverged(f"parameter {bad[0]} became NaN/Inf", epoch, step, good)


def _diverged(what: str, epoch: int, step: int, good: Path | None) -> None:
    kept = (f"the last good checkpoint is kept at {good}" if good and good.exists()
            else "no checkpoint was written yet")
    raise DivergenceError(f"training diverged at epoch {epoch}, step {step}: {what}; {kept}. "
                          "Lower --lr, raise --batch-size, or check the data")


def fit(vae: VAE, train_x: torch.Tensor, *, epochs: int, batch_size: int = 100,
        lr: float = 1e-3, loss: str = "elbo", num_particles: int = 1, beta: float = 1.0,
        beta_warmup_epochs: float = 0, binarize: bool = True, test_x: torch.Tensor | None = None,
        out_dir: str | Path | None = None, resume: bool = False, device: str = "auto",
        seed: int = 0, progress: bool = True, config: dict | None = None) -> FitResult:
    """Maximise the ELBO of ``vae`` on ``train_x`` by SVI with Adam.

    Loss per step = −ELBO of the batch = Σ_i E_q[−log p(x_i|z)] + β_t·KL(q(z|x_i) || p(z)),
    with β_t = ``beta``·min(1, t / (``beta_warmup_epochs``·steps per epoch)). ``train_x``
    holds the dataset (grayscale in [0, 1] when ``binarize``; each batch is then binarized
    afresh). With ``out_dir`` a checkpoint ``checkpoint.pt`` is written after every epoch;
    ``resume`` continues from it. Pyro's param store is cleared first: the VAE owns it.

    Raises DivergenceError (keeping the last good checkpoint) if the loss or a parameter
    becomes NaN/Inf.
    """
    if int(epochs) < 0 or int(batch_size) < 1 or not lr > 0:
        raise ConfigError(f"need epochs >= 0, batch_size >= 1 and lr > 0; got {epochs}, "
                          f"{batch_size}, {lr}")
    if beta_warmup_epochs < 0:
        raise ConfigError(f"--beta-warmup-epochs must be >= 0, got {beta_warmup_epochs}")
    dev = resolve_device(device)
    _check_inputs(vae, train_x, test_x, binarize)
    config = dict(config or {})
    path = ckpt.check_writable(out_dir) / "checkpoint.pt" if out_dir is not None else None

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae.to(dev)
    train_x = train_x.to(dev)
    test_x = test_x.to(dev) if test_x is not None else None
    optimizer = pyro.optim.Adam({"lr": lr})
    svi = SVI(vae.model, vae.guide, optimizer, loss=make_loss(loss, num_particles))
    history: list[EpochRecord] = []
    start_epoch, step, train_seconds = 0, 0, 0.0
    if resume:
        start_epoch, step, train_seconds, history = _resume(vae, optimizer, path, config)

    n = train_x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    warmup_steps = round(beta_warmup_epochs * steps_per_epoch)
    plate_size = vae.num_data if vae.needs_index else None
    for epoch in range(start_epoch + 1, int(epochs) + 1):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        batches = minibatches(train_x, batch_size, gen, binarize=binarize)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}",
                   disable=not progress, leave=False, dynamic_ncols=True)
        tic, total, seen = time.perf_counter(), 0.0, 0
        with pyro.validation_enabled(False):
            for idx, xb in bar:
                vae.beta = beta_at(step, beta, warmup_steps)
                args = (xb, idx) if vae.needs_index else (xb,)
                batch_loss = svi.step(*args)
                step += 1
                if not math.isfinite(batch_loss):
                    _diverged(f"the loss is {batch_loss}", epoch, step, path)
                b = xb.shape[0]
                total += batch_loss * (b / plate_size if plate_size else 1.0)
                seen += b
                if step % 10 == 0:
                    bar.set_postfix(elbo=f"{-total / seen:.2f}", beta=f"{vae.beta:.2f}")
        seconds = time.perf_counter() - tic
        train_seconds += seconds
        bar.close()
        _check_finite(vae, epoch, step, "end of epoch", path)
        test_elbo = (elbo_per_example_mean(vae, test_x)
                     if test_x is not None and not vae.needs_index else None)
        record = EpochRecord(epoch, step, vae.beta, -total / seen, test_elbo, seconds)
        history.append(record)
        log.info("epoch %d: train ELBO %.2f, test ELBO %s nats/image, %.1f s", epoch,
                 record.train_elbo, "n/a" if test_elbo is None else f"{test_elbo:.2f}", seconds)
        if path is not None:
            ckpt.save(path, config=config, model=vae, optimizer_state=optimizer.get_state(),
                      epoch=epoch, step=step, history=[asdict(r) for r in history],
                      train_seconds=train_seconds)
    return FitResult(tuple(history), max(int(epochs), start_epoch), step, train_seconds, path)


def _check_inputs(vae: VAE, train_x: torch.Tensor, test_x: torch.Tensor | None,
                  binarize: bool) -> None:
    if binarize:
        if bool(((train_x < 0) | (train_x > 1)).any()):
            raise DataError("training data must lie in [0, 1] to be binarized (Bernoulli "
                            "probabilities); rescale the images, e.g. x / 255")
        vae.check_data(train_x.round())  # shape and finiteness: binarized per batch later
    else:
        vae.check_data(train_x)
    if test_x is not None:
        vae.check_data(test_x)
    if vae.needs_index and vae.num_data != train_x.shape[0]:
        raise ConfigError(f"the guide holds parameters for {vae.num_data} examples but the "
                          f"training set has {train_x.shape[0]}; build it with "
                          f"num_data={train_x.shape[0]}")


def _resume(vae: VAE, optimizer, path: Path | None, config: dict):
    if path is None:
        raise ConfigError("resume needs out_dir (the folder holding checkpoint.pt)")
    payload = ckpt.load(path, map_location=next(vae.parameters()).device)
    ckpt.check_compatible(payload, config, path)
    ckpt.load_weights(vae, payload, path)
    _restore_free_params(vae, payload["param_store"])
    optimizer.set_state(payload["optimizer"])
    ckpt.set_rng_state(payload["rng"])
    history = [EpochRecord(**r) for r in payload["history"]]
    log.info("resumed from %s at epoch %d (step %d)", path, payload["epoch"], payload["step"])
    return payload["epoch"], payload["step"], payload["train_seconds"], history


def _restore_free_params(vae: VAE, state: dict) -> None:
    """Put back the param-store entries that are not the VAE's own weights.

    The VAE's weights come from its state dict: its parameters must stay the very tensors
    the param store holds, so the store is cleared and refilled from the module on first use.
    """
    pyro.clear_param_store()
    own = {name for name, _ in vae.named_parameters()}
    store = pyro.get_param_store()
    for name, value in state["params"].items():
        if name not in own:
            store.setdefault(name, value.detach().clone(), state["constraints"].get(name))
