"""``fit()``: SVI for a VAE with checkpoints and a NaN guard, in NumPyro's ``init``/``update``
split at the grain of an epoch: :func:`init` (a :class:`Session` and the state to start
from), :func:`run_epoch` (one epoch, one atomic checkpoint) and the loop, :func:`fit`."""
import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pyro
import torch
from torch import nn

from ..checks import SEED_LIMIT
from ..errors import CheckpointError, ConfigError, DivergenceError
from ..files import claim, run_lock
from ..infer.importance import log_likelihood
from ..infer.objectives import make_loss
from ..model.vae import VAE
from ..progress import progress_bar
from . import checkpoint, distributed
from .batches import epoch_batches, pass_size
from .distributed import resolve_device
from .config import TrainConfig
from .recipes import beta_at, make_scheduler
from .state import (EpochRecord, TrainState, data_difference, data_identity, rng_state,
                    set_rng_state)
from .compiled import CompiledStep
from .guard import CHECK_EVERY, EpochLosses, diverged
from .inputs import checked_data, checked_labels
from .step import LossModule, make_capturable, make_optimizer, make_step

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@torch.no_grad()
def mean_elbo(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """The mean over ``x`` of a one-sample ELBO at β = 1 (nats per image; given labels ``y``, of
    log p(x|y); an enumerated y summed exactly), each rank scoring its shard, from forked
    RNGs: the training run's random stream is left as it was."""
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    labels = {} if y is None else {"y": distributed.shard(y)}
    with torch.random.fork_rng(devices=devices):
        mine = log_likelihood(vae.model, vae.guide, distributed.shard(x), num_samples=1,
                              **labels)
        return float(distributed.gather(mine).mean())


@dataclass
class Session:
    """What :func:`run_epoch` works with: the live objects of one run, ``settings`` with seed
    and binarization resolved, the checkpoint ``path`` (or None) and its ``record``; the labels
    ``train_y`` and ``test_y`` of a VAE that takes them (else None)."""

    vae: VAE
    settings: TrainConfig
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: Callable[..., torch.Tensor]
    train_x: torch.Tensor
    test_x: torch.Tensor | None
    path: Path | None
    record: Mapping[str, Any]
    progress: bool
    ddp: nn.Module | None = None
    train_y: torch.Tensor | None = None
    test_y: torch.Tensor | None = None


def _resume(vae: VAE, optimizer, path: Path, settings: TrainConfig, data: dict
            ) -> tuple[TrainState, TrainConfig]:
    """The checkpoint's state and settings, its weights, optimiser and RNGs restored; refused for
    another model, other data (``data``) or other training settings."""
    ckpt = checkpoint.read(path, map_location=vae.device)
    if ckpt.state is None or ckpt.train is None:
        why = "no training state" if ckpt.state is None else \
            "training settings of an older pvae (format 2), not in this version's form"
        raise CheckpointError(f"{path} holds weights but {why}; it cannot be resumed: start a "
                              "new run in another folder")
    if not vae.config.custom and ckpt.model is not None:
        old, new = ckpt.model.to_dict(), vae.config.to_dict()
        detail = ", ".join(f"{k}: checkpoint {old[k]!r} vs now {new[k]!r}" for k in old
                           if old[k] != new[k] and k != "beta")
        if detail:
            raise CheckpointError(f"cannot resume from {path}: {detail}; rerun with the "
                                  "checkpoint's flags or without resume")
    moved = data_difference(ckpt.state.data, data)
    if moved:
        raise CheckpointError(f"cannot resume {path.parent} on other training data: {moved}; "
                              "resume with the data it was trained on, or start a new run")
    saved = ckpt.train
    asked = settings.replace(seed=saved.seed) if settings.seed is None else settings
    diff = [f"{k} {a!r} (the checkpoint has {b!r})" for k, a, b in asked.differences(saved)]
    if ckpt.config["beta"] != vae.beta:
        diff.append(f"beta {vae.beta!r} (the checkpoint has {ckpt.config['beta']!r})")
    if diff:
        raise ConfigError(f"cannot resume {path.parent} with changed training settings: "
                          f"{', '.join(diff)}; resume with the checkpoint's settings, or start "
                          "a new run in another folder", *(d.split()[0] for d in diff))
    if ckpt.state.epoch > settings.epochs:
        raise ConfigError(f"cannot resume {path.parent} to epochs {settings.epochs}: it is "
                          f"trained to epoch {ckpt.state.epoch} already; give epochs "
                          f"{ckpt.state.epoch + 1} or more to train further, or evaluate it as "
                          "it is (pvae evaluate, pvae.load)", "epochs")
    checkpoint.restore_weights(vae, ckpt.weights, path)
    optimizer.load_state_dict(ckpt.state.optimizer)
    set_rng_state(ckpt.state.rng)
    log.info("resumed from %s at epoch %d (step %d)", path, ckpt.state.epoch, ckpt.state.step)
    return ckpt.state, saved


def init(vae: VAE, train_x: torch.Tensor, settings: TrainConfig, *,
         test_x: torch.Tensor | None = None, out: Path | None = None, resume: bool = False,
         device: str = "auto", progress: bool = True, record: Mapping[str, Any] | None = None,
         y: torch.Tensor | None = None,
         test_y: torch.Tensor | None = None) -> tuple[Session, TrainState]:
    """The :class:`Session` and the state to start from: data and labels checked, RNGs seeded,
    the VAE on ``device``, the optimiser and its schedule, a checkpoint resumed (``resume``)."""
    with distributed.together("checking the arguments and the data"):
        dev = distributed.local_device(resolve_device(device))
        if settings.binarize is None:
            settings = settings.replace(binarize=vae.likelihood.data_kind == "binary")
        train_x, test_x = checked_data(vae, settings, training=train_x, test=test_x)
        y, test_y = checked_labels(vae, train_x, y, test_x, test_y)
        if resume and out is None:
            raise ConfigError("resume needs out_dir (the folder holding checkpoint.pt)", "resume")
    world, rank = distributed.world_size(), distributed.rank()
    if settings.seed is not None:
        pyro.set_rng_seed((settings.seed + rank) % (SEED_LIMIT + 1))
    vae.to(dev).zero_grad(set_to_none=True)
    graphs = settings.compile and dev.type == "cuda" and world == 1
    optimizer = make_optimizer(vae, settings.rate, settings.adam_eps, capturable=graphs)
    steps = round(settings.horizon * math.ceil(pass_size(train_x.shape[0], y, vae.supervision)
                                               / settings.batch_size))
    scheduler = make_scheduler(optimizer, settings.lr_schedule, steps)
    path, data = None if out is None else out / CHECKPOINT, data_identity(train_x, y)
    if resume:
        with distributed.together("reading the checkpoint"):
            state, saved = _resume(vae, optimizer, path, settings, data)
        settings = settings.replace(seed=saved.seed) if settings.seed is None else settings
        if state.scheduler:
            scheduler.load_state_dict(state.scheduler)
        if graphs:
            make_capturable(optimizer, dev)
    else:
        state = TrainState(0, 0, (), 0.0, {}, {}, data=data)
        if settings.seed is None:
            drawn = torch.tensor([int(torch.randint(0, SEED_LIMIT, ()))])
            settings = settings.replace(seed=int(distributed.gather(drawn)[0]))
    objective = make_loss(settings.loss, settings.num_particles,
                          enumerated=vae.supervision == "semi")
    ddp = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        module = LossModule(vae, objective, scale=world if vae.amortized else 1.0)
        ddp = DistributedDataParallel(module, device_ids=[dev] if dev.type == "cuda" else None)
    step = _make_step(vae, settings, objective, optimizer, ddp, graphs)
    moved = [None if t is None else t.to(dev) for t in (test_x, y, test_y)]
    session = Session(vae, settings, optimizer, scheduler, step, train_x.to(dev), moved[0],
                      path, dict(record or {}), progress and distributed.is_main(), ddp,
                      *moved[1:])
    return session, state


def _make_step(vae: VAE, settings: TrainConfig, objective, optimizer, ddp, graphs: bool):
    """The Pyro step, or with ``settings.compile`` the compiled one (CUDA graphs: ``graphs``)."""
    if settings.compile and ddp is not None:
        log.warning("--compile: data-parallel runs train with the Pyro step (the compiled step "
                    "is not combined with DistributedDataParallel)")
    elif settings.compile and vae.num_classes:
        log.warning("--compile: a model with labels trains with the Pyro step (the compiled "
                    "step has no labelled terms nor enumeration)")
    elif settings.compile:
        return CompiledStep(vae, settings.loss, settings.num_particles, objective, optimizer,
                            graphs=graphs)
    return make_step(vae, objective, optimizer, ddp)


def run_epoch(session: Session, state: TrainState) -> TrainState:
    """Train epoch ``state.epoch + 1``, check the parameters, score the test ELBO, checkpoint
    (rank 0); DivergenceError on NaN/Inf, the previous checkpoint intact."""
    vae, s, epoch, step = session.vae, session.settings, state.epoch + 1, state.step
    batches, steps_per_epoch = epoch_batches(session.train_x, session.train_y, s, epoch,
                                             vae.supervision, vae.amortized,
                                             session.ddp is not None)
    warmup_steps = round(s.warmup * steps_per_epoch)
    plate_size = None if vae.amortized else vae.num_data
    bar = progress_bar(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{s.epochs}",
                       leave=False, enabled=session.progress, unit="steps")
    losses = EpochLosses(steps_per_epoch, epoch, step, session.train_x.device,
                         session.path, session.ddp)
    tic, cpu_tic = time.perf_counter(), time.process_time()
    with pyro.validation_enabled(False):
        try:
            for args, kwargs in bar:
                with vae.warmup(beta_at(step, 1.0, warmup_steps)):
                    batch_loss = session.step(*args, **kwargs)
                    kl_weight = vae.kl_weight
                session.scheduler.step()
                step, b = step + 1, args[0].shape[0]
                losses.add(batch_loss, b / plate_size if plate_size else 1.0, b)  # Σ_i −ELBO_i
                if len(losses.factors) % CHECK_EVERY == 0:
                    losses.check()
                    bar.set_postfix(elbo=f"{-losses.total / losses.seen:.2f}",
                                    beta=f"{kl_weight:.2f}")
        except DivergenceError:
            if session.ddp is None:  # a NaN loss before the step that raised is the first cause
                losses.check()
            raise
        losses.check()
    seconds, cpu_seconds = time.perf_counter() - tic, time.process_time() - cpu_tic
    bar.close()
    bad = [n for n, p in vae.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        diverged(f"parameter {bad[0]} became NaN/Inf", epoch, step, session.path)
    elbo = mean_elbo(vae, session.test_x, session.test_y) if session.test_x is not None \
        and vae.amortized else None
    record = EpochRecord(epoch, step, kl_weight, -losses.total / losses.seen, elbo, seconds,
                         float(session.scheduler.get_last_lr()[0]), cpu_seconds)
    log.info("epoch %d: train ELBO %.2f, test ELBO %s nats/image, %.1f s", epoch,
             record.train_elbo, "n/a" if elbo is None else f"{elbo:.2f}", seconds)
    state = TrainState(epoch, step, (*state.history, record), state.train_seconds + seconds,
                       session.optimizer.state_dict(), rng_state(),
                       session.scheduler.state_dict(), state.data)
    if session.path is not None and distributed.is_main():
        checkpoint.save(session.path, vae, state, s, session.record)
    return state


def fit(vae: VAE, train_x: torch.Tensor, settings: TrainConfig | None = None, *,
        y: torch.Tensor | None = None, test_x: torch.Tensor | None = None,
        test_y: torch.Tensor | None = None, out_dir: str | Path | None = None,
        resume: bool = False, overwrite: bool = False, device: str = "auto",
        progress: bool = True, record: Mapping[str, Any] | None = None,
        **changes) -> TrainState:
    """Maximise the ELBO of ``vae`` on ``train_x`` (N, x_dim) by SVI with Adam at its β (loss
    Σ_i E_q[−log p(x_i|z)] + β_t·KL(q(z|x_i) || p(z)), β_t warming up to β); ``settings`` a
    :class:`~pvae.training.config.TrainConfig` whose fields ``changes`` replace. Labels ``y``
    (and ``test_y``) for a VAE with labels: conditional, one per example; semi, -1 where
    unlabelled (docs/labels.rst). ``out_dir``: a locked folder with an atomic checkpoint per
    epoch, refused if it holds a run unless ``resume`` (same settings and data) or
    ``overwrite``. Returns the final state; DivergenceError, the last good checkpoint kept, on
    a NaN/Inf loss or parameter."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"fit got unknown settings {unknown}; the TrainConfig fields are: "
                          f"{', '.join(sorted(known))}")
    settings = (settings or TrainConfig()).replace(**changes)
    with contextlib.ExitStack() as stack:  # holds rank 0's lock on the run folder
        out = None
        with distributed.together("checking the run folder"):
            if out_dir is not None:
                out = stack.enter_context(run_lock(out_dir)) if distributed.is_main() \
                    else Path(out_dir)
                if distributed.is_main():
                    claim(out, resume, overwrite)
        session, state = init(vae, train_x, settings, test_x=test_x, out=out, resume=resume,
                              device=device, progress=progress, record=record, y=y,
                              test_y=test_y)
        for _ in range(state.epoch, settings.epochs):
            state = run_epoch(session, state)
    return state
