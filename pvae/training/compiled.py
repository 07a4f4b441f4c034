"""The compiled training step (``--compile``): the loss and gradients of the Pyro step
(:func:`pvae.training.step.make_step`), with Pyro out of the loop. For each batch shape the
VAE's program is run once under Pyro and once plainly on the same draws, and the two must agree
site by site (:func:`pvae.infer.sites.verify_sites`); the plain loss of
:data:`pvae.infer.sites.SITE_LOSSES` is then compiled whole by ``torch.compile``, and on CUDA
the whole step (forward, backward, fused Adam) is captured in a CUDA graph over static batch
buffers, β and the learning rate on the device. What cannot be compiled falls back with one
logged line (docs/training.rst)."""
import logging
from typing import Callable

import torch

from ..infer.sites import SITE_LOSSES, analytic_sites, pyro_sites, verify_sites, vectorized
from ..model.vae import VAE
from .step import make_step, refuse_foreign_params

log = logging.getLogger(__name__)
GRAPH_WARMUP = 3
"""Steps of a batch shape run uncaptured (on a side stream) before its CUDA graph is captured."""


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def check_program(vae: VAE, owned: set, x: torch.Tensor, idx: torch.Tensor | None
                  ) -> tuple[str | None, dict]:
    """``(why not, analytic)``: None when the VAE's plain sites equal Pyro's trace of its program
    on ``x`` (same draws, forked RNG), else the difference; ``analytic`` the latent sites' KL
    kinds. ConfigError for a ``pyro.param`` outside the optimiser's ``owned`` parameters."""
    if not vae.plain_program:
        return "the VAE's model or guide is replaced, so its program is not the one compiled", {}
    args = (x,) if idx is None else (x, idx)
    data_scale = 1.0 if idx is None else (vae.num_data or x.shape[0]) / idx.shape[0]
    scale = torch.tensor(vae.kl_weight * data_scale, dtype=x.dtype, device=x.device)
    devices = _rng_devices(x.device)
    with torch.random.fork_rng(devices=devices), torch.no_grad(), vae.direct_params():
        with torch.random.fork_rng(devices=devices):
            guide_sites, model_sites, params = pyro_sites(vae.model, vae.guide, *args)
        plain = vae.plain_sites(*args, latent_scale=scale)
        why = verify_sites((guide_sites, model_sites), plain)
    refuse_foreign_params(params, owned)
    return why, analytic_sites(plain[1], plain[0])


class _Entry:
    """One batch shape's loss function, its data scale N/B and, when ``graphed`` (the first
    shape, on CUDA), its static buffers, warm-up count and graph."""

    def __init__(self, loss: Callable, data_scale: float, compiled: bool, graphed: bool):
        self.loss, self.data_scale = loss, data_scale
        self.compiled, self.graphed = compiled, graphed
        self.calls, self.graph, self.static, self.ran = 0, None, None, False


class CompiledStep:
    """``step(*args) -> loss`` (a detached device tensor the next step may overwrite), what
    :func:`~pvae.training.step.make_step` computes, from the plain program compiled for the first
    batch shape (``backend`` of ``torch.compile``; None: uncompiled; other shapes, an epoch's
    last batch, run it uncompiled); ``graphs`` (default: on CUDA) captures that shape's whole
    step. A program that is not the VAE's, or differs from Pyro's trace, takes the Pyro step."""

    def __init__(self, vae: VAE, loss: str, num_particles: int, objective,
                 optimizer: torch.optim.Optimizer, *, backend: str | None = "inductor",
                 graphs: bool | None = None):
        self.vae, self.name, self.k = vae, loss, int(num_particles)
        self.objective, self.optimizer, self.backend = objective, optimizer, backend
        self.graphs = vae.device.type == "cuda" if graphs is None else bool(graphs)
        self.owned = {p for group in optimizer.param_groups for p in group["params"]}
        self.entries: dict[tuple, _Entry] = {}
        self.fallback: Callable | None = None
        dtype = next((p.dtype for p in self.owned if p.is_floating_point()), torch.float32)
        self.scale = torch.zeros((), dtype=dtype, device=vae.device)
        self.analytic: dict = {}
        optimizer.zero_grad(set_to_none=True)

    def __call__(self, *args) -> torch.Tensor:
        """One step on the batch ``args`` = (x,) or (x, idx); its loss."""
        if self.fallback is not None:
            return self.fallback(*args)
        x, idx = args[0], (args[1] if len(args) > 1 else None)
        key = (tuple(x.shape), None if idx is None else tuple(idx.shape), x.dtype)
        entry = self.entries.get(key) or self._build(key, x, idx)
        if entry is None:
            return self.fallback(*args)
        self.scale.fill_(self.vae.kl_weight * entry.data_scale)
        if not entry.graphed:
            return self._direct(entry, x, idx)
        if entry.graph is None and entry.calls < GRAPH_WARMUP:
            entry.calls += 1
            return self._warm(entry, x, idx)
        return self._replay(entry, x, idx)

    def _build(self, key: tuple, x: torch.Tensor, idx: torch.Tensor | None) -> _Entry | None:
        why, self.analytic = check_program(self.vae, self.owned, x, idx)
        if why is not None:
            log.warning("--compile: %s; training with the Pyro step instead", why)
            self.fallback = make_step(self.vae, self.objective, self.optimizer)
            return None
        data_scale = 1.0 if idx is None else (self.vae.num_data or x.shape[0]) / idx.shape[0]
        first = not self.entries
        loss, compiled = self._plain_loss, self.backend is not None and first
        if compiled:
            options = {"fallback_random": True} if self.backend == "inductor" else None
            loss = torch.compile(loss, fullgraph=True, dynamic=False, backend=self.backend,
                                 options=options)
            log.info("--compile: compiling the step for batches of shape %s", key[0])
        elif self.backend is not None:
            log.info("--compile: batches of shape %s (an epoch's last) take the plain step "
                     "uncompiled", key[0])
        self.entries[key] = entry = _Entry(loss, data_scale, compiled, self.graphs and first)
        return entry

    def _plain_loss(self, x: torch.Tensor, idx: torch.Tensor | None,
                    scale: torch.Tensor) -> torch.Tensor:
        """The objective's loss of the VAE's plain program at latent scale ``scale``."""
        particles = self.k if vectorized(self.name, self.k) else None
        guide, model = self.vae.plain_sites(x, idx, latent_scale=scale, particles=particles)
        extra = {"analytic": self.analytic} if self.name == "meanfield" else {}
        return SITE_LOSSES[self.name](model, guide, self.k, **extra)

    def _body(self, entry: _Entry, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """Forward, backward and the optimiser's update: what a CUDA graph captures."""
        loss = self._loss(entry, x, idx)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _loss(self, entry: _Entry, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """The entry's loss; its first compiled call (where torch.compile compiles, never in a
        CUDA graph's capture) falls back to the plain loss, the draws restored, if it fails."""
        if not entry.compiled or entry.ran:
            return entry.loss(x, idx, self.scale)
        state = _rng_state(x.device)
        try:
            loss = entry.loss(x, idx, self.scale)
            entry.ran = True
            return loss
        except Exception as err:  # torch.compile's failures have no common base class
            _set_rng_state(x.device, state)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("--compile: torch.compile cannot take this step whole (%s); batches of "
                        "shape %s train with the uncompiled plain step", first[:200],
                        tuple(x.shape))
            entry.loss, entry.compiled = self._plain_loss, False
            return entry.loss(x, idx, self.scale)

    def _direct(self, entry: _Entry, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        return self._body(entry, x, idx)

    def _warm(self, entry: _Entry, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """An uncaptured step on the static buffers (a side stream on CUDA)."""
        x_s, idx_s = self._static(entry, x, idx)
        if x.device.type != "cuda":
            return self._direct(entry, x_s, idx_s)
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            loss = self._direct(entry, x_s, idx_s)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        return loss

    def _static(self, entry: _Entry, x: torch.Tensor, idx: torch.Tensor | None) -> tuple:
        if entry.static is None:
            entry.static = (x.clone(), None if idx is None else idx.clone())
        x_s, idx_s = entry.static
        x_s.copy_(x)
        if idx_s is not None:
            idx_s.copy_(idx)
        return x_s, idx_s

    def _replay(self, entry: _Entry, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """The step as one CUDA graph replay over the static buffers, captured at first use."""
        x_s, idx_s = self._static(entry, x, idx)
        if entry.graph is None:
            self.optimizer.zero_grad(set_to_none=True)
            entry.graph = capture(lambda: self._body(entry, x_s, idx_s), self.optimizer,
                                  x.device)
        return entry.graph.replay()


class Captured:
    """A step captured once in a ``torch.cuda.CUDAGraph``; :meth:`replay` runs it on whatever the
    static buffers hold and returns its static loss."""

    def __init__(self, body: Callable[[], torch.Tensor]):
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = body()

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.loss


class Emulated:
    """What :class:`Captured` does, run on a CPU: the body again at every replay, the gradients
    replaced (not accumulated) as a graph's replay replaces them."""

    def __init__(self, body: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer):
        self.body, self.optimizer = body, optimizer

    def replay(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        return self.body()


def capture(body: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
            device: torch.device):
    """:class:`Captured` on CUDA, :class:`Emulated` elsewhere (the tests' route to its code)."""
    return Captured(body) if device.type == "cuda" else Emulated(body, optimizer)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device)
                                   if device.type == "cuda" else None)


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
