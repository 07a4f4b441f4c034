"""``fit()``: stochastic variational inference for a VAE, with checkpoints and a NaN guard.

One epoch is one shuffled pass over the training set in minibatches (binarized afresh per
batch for binary likelihoods), one optimisation step per batch with Adam (:func:`make_step`:
the objective's differentiable loss on the model/guide pair, its backward pass, then one fused
``torch.optim.Adam`` over the VAE's parameters; ``fast=False`` takes ``pyro.infer.SVI.step`` with
``pyro.optim.Adam`` instead, the same update computed with one Adam per parameter). After each epoch the
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
from typing import Callable

import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.util import torch_item
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
    training objective's bound (the ELBO at that epoch's β; the IWAE bound with
    ``loss="iwae"``); ``test_elbo`` is the plain one-sample ELBO at β = 1."""

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


def make_optimizer(vae: VAE, lr: float, fast: bool = True):
    """Adam with rate ``lr`` for ``vae``'s parameters.

    ``fast``: one ``torch.optim.Adam`` over ``vae.parameters()`` (fused where torch has the
    fused kernel for their device); else ``pyro.optim.Adam``, which makes one
    ``torch.optim.Adam`` per parameter on first sight. Both apply the same update rule
    (β₁ = 0.9, β₂ = 0.999, ε = 1e-8); the fused kernel rounds differently in the last bit.
    """
    if not fast:
        return pyro.optim.Adam({"lr": lr})
    params = [p for p in vae.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.Adam(params, lr=lr)


def make_step(vae: VAE, objective: pyro.infer.ELBO, optimizer) -> Callable[..., float]:
    """Return ``step(*args) -> loss``: one gradient step on ``objective`` for ``vae``.

    With a ``pyro.optim`` optimizer this is ``SVI(vae.model, vae.guide, optimizer,
    objective).step``. With a ``torch.optim`` optimizer over the VAE's parameters (the
    default) a step is ``loss = objective.differentiable_loss(vae.model, vae.guide, *args)``
    inside :meth:`~pvae.vae.VAE.direct_params`, ``loss.backward()``, ``optimizer.step()`` and
    ``zero_grad``. Both compute the same loss and gradients; the second skips SVI's
    per-step capture of the params, its per-parameter optimizers and the ``pyro.param``
    message per weight. Its first step checks that no free ``pyro.param`` (one that is not
    a parameter of the VAE's modules) takes part in the objective: the torch optimizer
    would not update it (ConfigError; ``fit(fast=False)`` optimises those too).
    """
    if isinstance(optimizer, pyro.optim.PyroOptim):
        return SVI(vae.model, vae.guide, optimizer, loss=objective).step
    model, guide = vae.model, vae.guide
    owned = {p for group in optimizer.param_groups for p in group["params"]}
    optimizer.zero_grad(set_to_none=True)
    checked = False

    def step(*args) -> float:
        nonlocal checked
        if checked:
            with vae.direct_params():
                loss = objective.differentiable_loss(model, guide, *args)
        else:
            with poutine.trace(param_only=True) as capture, vae.direct_params():
                loss = objective.differentiable_loss(model, guide, *args)
            for name, site in capture.trace.nodes.items():
                value = site["value"]
                if getattr(value, "unconstrained", lambda: value)() not in owned:
                    raise ConfigError(f"pyro.param {name!r} is not a parameter of the VAE's "
                                      "modules, so the fast path cannot optimise it; "
                                      "use fit(..., fast=False)")
            checked = True
        if loss.requires_grad:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return torch_item(loss)

    return step


def optimizer_state(vae: VAE, optimizer) -> dict:
    """The optimizer's state as ``{parameter name: torch state dict of a one-parameter Adam}``.

    This is ``pyro.optim.PyroOptim.get_state()``'s layout; a single ``torch.optim.Adam``
    is written in it too, so a checkpoint resumes on either path.
    """
    if isinstance(optimizer, pyro.optim.PyroOptim):
        return optimizer.get_state()
    names = {p: n for n, p in vae.named_parameters()}
    full = optimizer.state_dict()
    state, index = {}, 0
    for group, saved in zip(optimizer.param_groups, full["param_groups"]):
        hyper = {k: v for k, v in saved.items() if k != "params"}
        for p in group["params"]:
            if index in full["state"]:
                state[names[p]] = {"state": {0: full["state"][index]},
                                   "param_groups": [dict(hyper, params=[0])]}
            index += 1
    return state


def load_optimizer_state(vae: VAE, optimizer, state: dict) -> None:
    """Restore the state written by :func:`optimizer_state` into ``optimizer``."""
    if isinstance(optimizer, pyro.optim.PyroOptim):
        optimizer.set_state(state)
        return
    names = {p: n for n, p in vae.named_parameters()}
    full = optimizer.state_dict()
    index, hyper = 0, None
    for group, saved in zip(optimizer.param_groups, full["param_groups"]):
        for p in group["params"]:
            entry = state.get(names[p])
            if entry is not None:
                full["state"][index] = entry["state"][0]
                hyper = hyper or entry["param_groups"][0]
            index += 1
    if hyper is not None:
        keep = ("params", "foreach", "fused", "capturable", "differentiable")
        for saved in full["param_groups"]:
            saved.update({k: v for k, v in hyper.items() if k not in keep and k in saved})
    optimizer.load_state_dict(full)


def _check_finite(vae: VAE, epoch: int, step: int, good: Path | None) -> None:
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
        seed: int = 0, progress: bool = True, config: dict | None = None,
        fast: bool = True) -> FitResult:
    """Maximise the ELBO of ``vae`` on ``train_x`` by SVI with Adam.

    Loss per step = −ELBO of the batch = Σ_i E_q[−log p(x_i|z)] + β_t·KL(q(z|x_i) || p(z)),
    with β_t = ``beta``·min(1, t / (``beta_warmup_epochs``·steps per epoch)). ``train_x``
    holds the dataset (grayscale in [0, 1] when ``binarize``; each batch is then binarized
    afresh). With ``out_dir`` a checkpoint ``checkpoint.pt`` is written after every epoch;
    ``resume`` continues from it. Pyro's param store is cleared first: the VAE owns it.
    The fast path (default) steps with the objective's ``differentiable_loss`` and one fused
    Adam; ``fast=False`` steps with ``pyro.infer.SVI`` and ``pyro.optim.Adam`` (see
    :func:`make_step`). Both reach the same numbers up to float rounding.

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
    vae.zero_grad(set_to_none=True)
    optimizer = make_optimizer(vae, lr, fast)
    objective = make_loss(loss, num_particles)
    history: list[EpochRecord] = []
    start_epoch, step, train_seconds = 0, 0, 0.0
    if resume:
        start_epoch, step, train_seconds, history = _resume(vae, optimizer, path, config)
    step_fn = make_step(vae, objective, optimizer)

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
                batch_loss = step_fn(*args)
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
        _check_finite(vae, epoch, step, path)
        test_elbo = (elbo_per_example_mean(vae, test_x)
                     if test_x is not None and not vae.needs_index else None)
        record = EpochRecord(epoch, step, vae.beta, -total / seen, test_elbo, seconds)
        history.append(record)
        log.info("epoch %d: train ELBO %.2f, test ELBO %s nats/image, %.1f s", epoch,
                 record.train_elbo, "n/a" if test_elbo is None else f"{test_elbo:.2f}", seconds)
        if path is not None:
            ckpt.save(path, config=config, model=vae, optimizer_state=optimizer_state(vae, optimizer),
                      epoch=epoch, step=step, history=[asdict(r) for r in history],
                      train_seconds=train_seconds)
    return FitResult(tuple(history), max(int(epochs), start_epoch), step, train_seconds, path)


def _check_inputs(vae: VAE, train_x: torch.Tensor, test_x: torch.Tensor | None,
                  binarize: bool) -> None:
    vae.check_data(train_x, probabilities=binarize)  # binarized per batch later
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
    load_optimizer_state(vae, optimizer, payload["optimizer"])
    ckpt.set_rng_state(payload["rng"])
    history = [EpochRecord(**r) for r in payload["history"]]
    log.info("resumed from %s at epoch %d (step %d)", path, payload["epoch"], payload["step"])
    return payload["epoch"], payload["step"], payload["train_seconds"], history


def _restore_free_params(vae: VAE, state: dict) -> None:
    """Put back the param-store entries that are not the VAE's own weights.

    The VAE's weights come from its state dict; the store is cleared so that the model's
    and guide's ``pyro.param`` statements register the module's own tensors again rather
    than meeting stale ones under their names.
    """
    pyro.clear_param_store()
    own = {name for name, _ in vae.named_parameters()}
    store = pyro.get_param_store()
    for name, value in state["params"].items():
        if name not in own:
            store.setdefault(name, value.detach().clone(), state["constraints"].get(name))
