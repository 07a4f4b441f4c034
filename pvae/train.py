"""``fit()``: stochastic variational inference for a VAE, with checkpoints and a NaN guard.

Each epoch ends with a finite-parameter check and an atomic checkpoint, so an interrupted run
loses at most one epoch and ``resume=True`` reaches the parameters of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.util import torch_item
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint, distributed
from .data import minibatches
from .errors import CheckpointError, ConfigError, DataError, DivergenceError
from .files import run_lock
from .objectives import beta_at, make_loss
from .parts import real_number, whole_number
from .recipes import make_scheduler
from .state import EpochRecord, TrainSettings, TrainState, check_settings, rng_state, set_rng_state
from .vae import VAE

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
UNRECORDED = ("image_shape", "dataset")
"""VAEConfig fields that older checkpoints lack (None): they resume as MNIST's 28×28."""
SEED_LIMIT = 2**32 - 1


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
def mean_elbo(vae: VAE, x: torch.Tensor) -> float:
    """The mean over ``x`` of a one-sample estimate of the ELBO at β = 1 (nats per image).

    Its draws come from forked RNGs, so evaluating during training leaves the training
    run's random stream, and hence its parameters, exactly as they would be without it.
    In a data-parallel run each rank scores its :func:`~pvae.distributed.shard` of ``x``.
    """
    from .evaluate import log_likelihood

    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        mine = log_likelihood(vae.model, vae.guide, distributed.shard(x), num_samples=1)
        return float(distributed.gather(mine).mean())


def make_optimizer(vae: VAE, lr: float, eps: float = 1e-8) -> torch.optim.Adam:
    """One ``torch.optim.Adam`` (fused where torch can) over the VAE's trainable parameters:
    the update ``pyro.optim.Adam`` applies per parameter."""
    params = [p for p in vae.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, eps=eps)


class LossModule(nn.Module):
    """``forward(*args)`` = ``scale`` · ``objective``'s differentiable loss of ``vae`` on the
    batch: the module ``DistributedDataParallel`` wraps so that ``backward`` all-reduces
    (averages) the gradients over the ranks."""

    def __init__(self, vae: VAE, objective: pyro.infer.ELBO, scale: float = 1.0):
        super().__init__()
        self.vae, self.objective, self.scale = vae, objective, float(scale)

    def forward(self, *args) -> torch.Tensor:
        loss = self.objective.differentiable_loss(self.vae.model, self.vae.guide, *args)
        return loss * self.scale if self.scale != 1.0 else loss


def make_step(vae: VAE, objective: pyro.infer.ELBO, optimizer: torch.optim.Optimizer,
              loss_module: nn.Module | None = None) -> Callable[..., float]:
    """Return ``step(*args) -> loss``: one gradient step on ``objective`` for ``vae``.

    The loss and gradients of ``pyro.infer.SVI(...).step``, without SVI's per-step param
    capture and per-parameter optimizers. The first step refuses (ConfigError) a free
    ``pyro.param``, one that is not a parameter of the VAE's modules: it would not be updated.
    ``loss_module`` (a ``DistributedDataParallel`` around a :class:`LossModule`), if given,
    computes the loss instead, and its backward pass all-reduces the gradients.
    """
    model, guide = vae.model, vae.guide
    compute = loss_module or (lambda *args: objective.differentiable_loss(model, guide, *args))
    owned = {p for group in optimizer.param_groups for p in group["params"]}
    optimizer.zero_grad(set_to_none=True)
    checked = False

    def step(*args) -> float:
        nonlocal checked
        if checked:
            with vae.direct_params():
                loss = compute(*args)
        else:
            with poutine.trace(param_only=True) as capture, vae.direct_params():
                loss = compute(*args)
            for name, site in capture.trace.nodes.items():
                value = site["value"]
                if getattr(value, "unconstrained", lambda: value)() not in owned:
                    raise ConfigError(f"pyro.param {name!r} is not a parameter of the VAE's "
                                      "modules, so fit cannot optimise it; make it an "
                                      "nn.Parameter of a module or train with pyro.infer.SVI")
            checked = True
        if loss.requires_grad:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return torch_item(loss)

    return step


def _diverged(what: str, epoch: int, step: int, good: Path | None) -> None:
    kept = (f"the last good checkpoint is kept at {good}" if good and good.exists()
            else "no checkpoint was written yet")
    raise DivergenceError(f"training diverged at epoch {epoch}, step {step}: {what}; {kept}. "
                          "Lower --lr, raise --batch-size, or check the data")


def fit(vae: VAE, train_x: torch.Tensor, *, epochs: int, batch_size: int = 100,
        lr: float = 1e-3, loss: str = "elbo", num_particles: int = 1,
        beta_warmup_epochs: float = 0, binarize: bool | None = None,
        test_x: torch.Tensor | None = None, out_dir: str | Path | None = None,
        resume: bool = False, overwrite: bool = False, device: str = "auto",
        seed: int | None = None, progress: bool = True, adam_eps: float = 1e-8,
        lr_schedule: str = "constant", schedule_epochs: float | None = None) -> TrainState:
    """Maximise the ELBO of ``vae`` on ``train_x`` by SVI with Adam, at the VAE's own β.

    Loss per step = −ELBO of the batch = Σ_i E_q[−log p(x_i|z)] + β_t·KL(q(z|x_i) || p(z)),
    with β_t = ``vae.beta``·min(1, t / (``beta_warmup_epochs``·steps per epoch)). ``train_x``
    is a tensor ``(N, x_dim)`` converted to the VAE's dtype; with ``binarize`` (default: when
    the likelihood is binary) it holds probabilities in [0, 1], each batch binarized afresh.

    ``out_dir``: a locked folder with a checkpoint ``checkpoint.pt`` after every epoch; one
    that holds a checkpoint already is refused unless ``resume`` (its training settings must
    match these) or ``overwrite``. ``lr_schedule`` (:mod:`pvae.recipes`: ``"constant"``, or
    ``"burda"``'s decay spread over ``schedule_epochs``, default ``epochs``) is a
    ``torch.optim.lr_scheduler`` stepped per step and resumed exactly; ``adam_eps`` is Adam's ε.
    ``seed`` seeds Pyro's, torch's and NumPy's global RNGs and each epoch's shuffle; with None
    the RNGs are left alone and the shuffle seed is drawn from torch's. Pyro's param store is
    not touched. The VAE moves to ``device``, the data too.

    In a joined process group of W ranks (:mod:`pvae.distributed`; each rank calls ``fit``
    with the same arguments) the run is data-parallel: ``batch_size`` is the global batch,
    each rank takes its ``batch_size / W`` examples of it (:func:`~pvae.data.minibatches`),
    draws its own Monte Carlo noise (torch's RNGs seeded per rank and epoch) and the loss goes
    through ``DistributedDataParallel``, whose averaged gradient is the global batch's: an
    amortized VAE's per-rank loss is multiplied by W, and a local guide's ``"data"`` plate
    keeps size N, so its N/B_rank scale does it. Rank 0 alone writes the checkpoint; every
    rank reads it to resume; a NaN loss on any rank stops every rank.

    Returns the final :class:`~pvae.state.TrainState`; DivergenceError (keeping the last good
    checkpoint) if the loss or a parameter becomes NaN/Inf.
    """
    with contextlib.ExitStack() as stack:  # holds rank 0's lock on the run folder
        with distributed.together("checking the arguments, the data and the run folder"):
            epochs = whole_number("epochs", epochs)
            batch_size = whole_number("batch_size", batch_size)
            num_particles = whole_number("num_particles", num_particles)
            seed = None if seed is None else whole_number("seed", seed)
            rate, warmup = real_number(lr), real_number(beta_warmup_epochs)
            eps = real_number(adam_eps)
            horizon = 0.0 if lr_schedule == "constant" else real_number(
                epochs if schedule_epochs is None else schedule_epochs)
            checks = (("epochs", epochs, epochs >= 0, ">= 0"),
                      ("batch_size", batch_size, batch_size >= 1, ">= 1"),
                      ("num_particles", num_particles, num_particles >= 1, ">= 1"),
                      ("lr", lr, math.isfinite(rate) and rate > 0, "a finite number > 0"),
                      ("beta_warmup_epochs", beta_warmup_epochs,
                       math.isfinite(warmup) and warmup >= 0, "a finite number >= 0"),
                      ("seed", seed, seed is None or 0 <= seed <= SEED_LIMIT,
                       f"in [0, {SEED_LIMIT}]"),
                      ("adam_eps", adam_eps, math.isfinite(eps) and eps > 0,
                       "a finite number > 0"),
                      ("schedule_epochs", schedule_epochs,
                       math.isfinite(horizon) and (horizon > 0 or lr_schedule == "constant"),
                       "a finite number > 0"))
            for name, value, ok, what in checks:
                if not ok:
                    raise ConfigError(f"{name} must be {what}, got {value!r}")
            if resume and overwrite:
                raise ConfigError("resume and overwrite exclude each other: continue the run or "
                                  "replace it")
            dev = distributed.local_device(resolve_device(device))
            binarize = vae.likelihood.data_kind == "binary" if binarize is None else bool(binarize)
            dtype = next((p.dtype for p in vae.parameters() if p.is_floating_point()),
                         torch.float32)
            train_x = as_training_data(train_x, "the training data", dtype)
            test_x = None if test_x is None else as_training_data(test_x, "the test data", dtype)
            vae.check_data(train_x, probabilities=binarize)
            if test_x is not None:
                vae.check_data(test_x)
            if not vae.amortized and vae.num_data != train_x.shape[0]:
                raise ConfigError(f"the guide holds parameters for {vae.num_data} examples but "
                                  f"the training set has {train_x.shape[0]}; build it with "
                                  f"num_data={train_x.shape[0]}")
            if resume and out_dir is None:
                raise ConfigError("resume needs out_dir (the folder holding checkpoint.pt)")
            world, rank = distributed.world_size(), distributed.rank()
            if batch_size % world:
                raise ConfigError(f"batch_size {batch_size} is the global batch of {world} ranks "
                                  f"and must be a multiple of {world}; each rank takes "
                                  f"batch_size / {world} examples of it")
            for name, x in (("training", train_x), ("test", test_x)):
                if x is not None and x.shape[0] < world:
                    raise ConfigError(f"{x.shape[0]} {name} example(s) are too few for {world} "
                                      "ranks; give at least one per rank")
            out = None if out_dir is None else (stack.enter_context(run_lock(out_dir))
                                                if distributed.is_main() else Path(out_dir))
            path = out / CHECKPOINT if out is not None else None
            if path is not None and path.exists() and not (resume or overwrite):
                raise ConfigError(f"{out} already holds a run's checkpoint; resume it "
                                  "(--resume), replace it (--overwrite), or choose another --out")
        if seed is not None:
            pyro.set_rng_seed((seed + rank) % (SEED_LIMIT + 1))
        settings = TrainSettings(batch_size=batch_size, lr=rate, loss=loss,
                                 num_particles=num_particles, beta=vae.beta,
                                 beta_warmup_epochs=warmup, binarize=binarize,
                                 seed=-1 if seed is None else seed, adam_eps=eps,
                                 lr_schedule=lr_schedule, schedule_epochs=horizon)
        vae.to(dev)
        vae.zero_grad(set_to_none=True)
        optimizer = make_optimizer(vae, rate, eps)
        scheduler = make_scheduler(optimizer, lr_schedule,
                                   round(horizon * math.ceil(train_x.shape[0] / batch_size)))
        objective = make_loss(loss, num_particles)
        if resume:
            with distributed.together("reading the checkpoint"):
                state = _resume(vae, optimizer, path, settings)
            if state.scheduler:
                scheduler.load_state_dict(state.scheduler)
        else:
            if seed is None:
                settings = dataclasses.replace(settings, seed=int(torch.randint(0, SEED_LIMIT, ())))
            state = TrainState(0, 0, (), 0.0, settings, {}, {})
            if world > 1:
                state = dataclasses.replace(state, settings=dataclasses.replace(
                    settings, seed=int(distributed.gather(torch.tensor([settings.seed]))[0])))
        ddp = None
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            module = LossModule(vae, objective, scale=world if vae.amortized else 1.0)
            ddp = DistributedDataParallel(module, device_ids=[dev] if dev.type == "cuda" else None)
        state = _train(vae, optimizer, scheduler, objective, state, train_x.to(dev),
                       test_x.to(dev) if test_x is not None else None, epochs, path,
                       progress and distributed.is_main(), ddp)
    return state


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of rank ``rank``'s RNGs in ``epoch`` of a data-parallel run: distinct per rank,
    and a function of (seed, epoch, rank) alone, so a resumed run draws the same noise."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + rank) % (SEED_LIMIT + 1)


def _train(vae: VAE, optimizer, scheduler, objective, state: TrainState, train_x: torch.Tensor,
           test_x: torch.Tensor | None, epochs: int, path: Path | None,
           progress: bool, ddp: nn.Module | None = None) -> TrainState:
    s = state.settings
    step_fn = make_step(vae, objective, optimizer, ddp)
    n = train_x.shape[0]
    world, rank = (distributed.world_size(), distributed.rank()) if ddp is not None else (1, 0)
    steps_per_epoch = math.ceil(math.ceil(n / world) / (s.batch_size // world))
    warmup_steps = round(s.beta_warmup_epochs * steps_per_epoch)
    amortized = vae.amortized
    plate_size = None if amortized else vae.num_data
    history, step, train_seconds = list(state.history), state.step, state.train_seconds
    for epoch in range(state.epoch + 1, epochs + 1):
        gen = torch.Generator().manual_seed(s.seed * 1_000_003 + epoch)
        if ddp is not None:
            pyro.set_rng_seed(epoch_seed(s.seed, epoch, rank))
        batches = minibatches(train_x, s.batch_size, gen, binarize=s.binarize, rank=rank,
                              world_size=world)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}",
                   disable=not progress, leave=False, dynamic_ncols=True)
        tic, cpu_tic, total, seen = time.perf_counter(), time.process_time(), 0.0, 0
        with pyro.validation_enabled(False):
            for idx, xb in bar:
                with vae.warmup(beta_at(step, 1.0, warmup_steps)):
                    batch_loss = step_fn(*((xb,) if amortized else (xb, idx)))
                    kl_weight = vae.kl_weight
                scheduler.step()
                step += 1
                b = xb.shape[0]
                summed = batch_loss * (b / plate_size if plate_size else 1.0)  # Σ_i −ELBO_i
                if ddp is not None:  # the global batch's sum; a NaN on any rank stops every rank
                    summed, b = distributed.all_sum(summed / ddp.module.scale, b)
                    b = int(b)
                if not math.isfinite(summed):
                    _diverged(f"the loss is {summed}", epoch, step, path)
                total += summed
                seen += b
                if step % 10 == 0:
                    bar.set_postfix(elbo=f"{-total / seen:.2f}", beta=f"{kl_weight:.2f}")
        seconds, cpu_seconds = time.perf_counter() - tic, time.process_time() - cpu_tic
        train_seconds += seconds
        bar.close()
        bad = [n for n, p in vae.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            _diverged(f"parameter {bad[0]} became NaN/Inf", epoch, step, path)
        elbo = mean_elbo(vae, test_x) if test_x is not None and amortized else None
        record = EpochRecord(epoch, step, kl_weight, -total / seen, elbo, seconds,
                             scheduler.get_last_lr()[0], cpu_seconds)
        history.append(record)
        log.info("epoch %d: train ELBO %.2f, test ELBO %s nats/image, %.1f s", epoch,
                 record.train_elbo, "n/a" if elbo is None else f"{elbo:.2f}", seconds)
        state = TrainState(epoch, step, tuple(history), train_seconds, s,
                           optimizer.state_dict(), rng_state(), scheduler.state_dict())
        if path is not None and distributed.is_main():
            checkpoint.save(path, vae, state)
    return state


def as_training_data(x, name: str, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (a bool, integer or floating tensor) as ``dtype``; DataError for an empty or
    complex tensor or something that is not a tensor."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor of shape (N, x_dim), got "
                        f"{type(x).__name__}; wrap a NumPy array with torch.from_numpy")
    if x.is_complex():
        raise DataError(f"{name} is complex ({x.dtype}); pass real pixel values")
    if x.dim() >= 1 and x.shape[0] == 0:
        raise DataError(f"{name} is empty (0 examples); pass at least one")
    return x if x.dtype == dtype else x.to(dtype)


def _resume(vae: VAE, optimizer, path: Path, settings: TrainSettings) -> TrainState:
    ckpt = checkpoint.read(path, map_location=vae.device)
    if ckpt.state is None:
        raise CheckpointError(f"{path} holds weights but no training state; it cannot be resumed")
    if vae.config is not None and ckpt.config is not None and ckpt.config != vae.config:
        old, new = ckpt.config.to_dict(), vae.config.to_dict()
        detail = ", ".join(f"{k}: checkpoint {old[k]!r} vs now {new[k]!r}" for k in old
                           if old[k] != new[k] and not (k in UNRECORDED and old[k] is None))
        if detail:
            raise CheckpointError(f"cannot resume from {path}: {detail}; rerun with the "
                                  "checkpoint's flags or without --resume")
    saved = ckpt.state.settings
    asked = dataclasses.replace(settings, seed=saved.seed) if settings.seed == -1 else settings
    check_settings(saved, asked, str(path.parent))
    checkpoint.restore_weights(vae, ckpt.weights, path)
    optimizer.load_state_dict(ckpt.state.optimizer)
    set_rng_state(ckpt.state.rng)
    log.info("resumed from %s at epoch %d (step %d)", path, ckpt.state.epoch, ckpt.state.step)
    return ckpt.state
