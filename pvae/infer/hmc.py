"""Hamiltonian Monte Carlo for :mod:`pvae.infer.annealing` on the latents of B examples at C
chains, one move leaving f_τ = q^(1−τ) p^τ invariant (the kernel: docs/evaluation.rst)."""
import logging
import math
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from ..errors import ConfigError
from .logweights import DATA_PLATE, PARTICLE_PLATE, trace_log_density
from .sites import log_density

SCALE_DRAWS = 64
log = logging.getLogger(__name__)


class Layout:
    """The latent sites of a vectorized trace as one (C, B, D) tensor and back."""

    def __init__(self, trace, names: list[str], particle_dim: int):
        self.names, self.pos, self.shapes = names, [], []
        for name in names:
            site = trace.nodes[name]
            value, frame = site["value"], next(f for f in site["cond_indep_stack"]
                                               if f.name == DATA_PLATE)
            batch = value.dim() - site["fn"].event_dim
            if batch + particle_dim != 0:
                raise ConfigError(f"latent site {name!r} has batch shape "
                                  f"{tuple(value.shape[:batch])}: AIS needs it to span exactly "
                                  "the plates it sits in")
            moved = value.movedim(batch + frame.dim, 1)
            self.pos.append(batch + frame.dim)
            self.shapes.append(moved.shape[2:])

    def flatten(self, values: dict) -> torch.Tensor:
        """{site: value} -> (C, B, D)."""
        parts = [values[n].movedim(p, 1) for n, p in zip(self.names, self.pos)]
        return torch.cat([v.reshape(v.shape[:2] + (-1,)) for v in parts], dim=-1)

    def unflatten(self, z: torch.Tensor) -> dict:
        """(C, B, D) -> {site: value}."""
        return unflatten(z, self.key)

    @property
    def key(self) -> tuple:
        """(names, positions, shapes) as plain tuples: what :func:`unflatten` needs."""
        return tuple(self.names), tuple(self.pos), tuple(tuple(s) for s in self.shapes)


def unflatten(z: torch.Tensor, key: tuple) -> dict:
    """(C, B, D) -> {site: value} for a :attr:`Layout.key`."""
    out, start = {}, 0
    for name, pos, shape in zip(*key):
        size = math.prod(shape)
        piece = z[..., start:start + size].reshape(z.shape[:2] + tuple(shape))
        out[name], start = piece.movedim(1, pos), start + size
    return out


def plain_densities(program, x: torch.Tensor, args: tuple, z: torch.Tensor, key: tuple,
                    particle_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x, z), log q(z|x)), float64 (C, B), from the plain twin ``program`` at the flat z
    (C, B, D) of layout ``key``: a function of tensors and constants that torch.compile takes."""
    guide, model = program.plain_sites(x, *args, latent_scale=1.0, values=unflatten(z, key))
    return log_density(model, particle_dim), log_density(guide, particle_dim)


class CompiledDensities:
    """:func:`plain_densities` under ``torch.compile(backend=...)`` (fullgraph, a graph per
    shape), shared by an AIS run's targets; the first failure to compile is logged once and
    the run goes on uncompiled."""

    def __init__(self, backend: str):
        self.backend = backend
        self.fn: Callable | None = torch.compile(plain_densities, backend=backend,
                                                 fullgraph=True, dynamic=False)

    def __call__(self, *args) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fn is not None:
            try:
                return self.fn(*args)
            except Exception as err:  # torch.compile's failures have no common base class
                first = (str(err).strip() or type(err).__name__).splitlines()[0]
                log.warning("AIS: torch.compile cannot take the log-joint whole (%s); the run "
                            "goes on uncompiled", first[:200])
                self.fn = None
        return plain_densities(*args)


def chain_trace(fn, call: tuple, particle_dim: int, chains: int, values: dict | None = None):
    """The trace of ``fn`` on ``call`` = (x, args, kwargs) under ``chains`` particles."""
    x, args, kwargs = call
    fn = pyro.plate(PARTICLE_PLATE, chains, dim=particle_dim)(fn)
    if values is not None:
        fn = poutine.condition(fn, data=values)
    return poutine.trace(fn).get_trace(x, *args, **kwargs)


def latent_names(trace) -> list[str]:
    """The names of a trace's unobserved sample sites (subsample sites left out)."""
    return [n for n, s in trace.nodes.items() if s["type"] == "sample"
            and not site_is_subsample(s) and not s["is_observed"]]


class Target:
    """log p(x, z), log q(z|x) (float64, (C, B)) and their z-gradients; :attr:`z0`: guide draws.
    With ``program`` (:func:`~pvae.infer.host.plain_twin`) the densities come from its plain
    twin, the same sums without Pyro's tracing at every leapfrog step; with ``compiled`` too,
    those sums compiled (:class:`CompiledDensities`)."""

    def __init__(self, model, guide, call: tuple, particle_dim: int, chains: int,
                 program=None, compiled: CompiledDensities | None = None):
        self.model, self.guide, self.call, self.program = model, guide, call, program
        self.compiled = compiled
        self.pdim, self.chains = particle_dim, chains
        with torch.no_grad():
            tr = chain_trace(guide, call, particle_dim, chains)
        names = latent_names(tr)
        self.layout = Layout(tr, names, particle_dim)
        # one latent site: q's distribution cannot depend on z, so it is computed once
        self.q_sites = {names[0]: tr.nodes[names[0]]} if len(names) == 1 else None
        self.z0 = self.layout.flatten({n: tr.nodes[n]["value"] for n in names})

    def _densities(self, values: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.program is not None:
            x, args, _ = self.call
            guide, model = self.program.plain_sites(x, *args, latent_scale=1.0, values=values)
            return log_density(model, self.pdim), log_density(guide, self.pdim)
        log_p = trace_log_density(
            chain_trace(self.model, self.call, self.pdim, self.chains, values), self.pdim)
        q_trace = (chain_trace(self.guide, self.call, self.pdim, self.chains, values)
                   if self.q_sites is None else
                   {n: dict(s, value=values[n]) for n, s in self.q_sites.items()})
        return log_p, trace_log_density(q_trace, self.pdim)

    def __call__(self, z: torch.Tensor):
        """(log p, log q, ∇_z log p, ∇_z log q) at z of shape (C, B, D)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            if self.program is not None and self.compiled is not None:
                x, args, _ = self.call
                log_p, log_q = self.compiled(self.program, x, tuple(args), z, self.layout.key,
                                             self.pdim)
            else:
                log_p, log_q = self._densities(self.layout.unflatten(z))
            grad_p, = torch.autograd.grad(log_p.sum(), z, retain_graph=True)
            grad_q, = torch.autograd.grad(log_q.sum(), z)
        return log_p.detach(), log_q.detach(), grad_p, grad_q


def transition(target: Target, state: tuple, tau: float, step: torch.Tensor,
                num_leapfrog: int) -> tuple[tuple, torch.Tensor]:
    """One HMC move leaving f_τ invariant from state (z, log p, log q, ∇log p, ∇log q), with
    per-coordinate steps ``step`` = ε·s (B, D); returns the new state and the (C, B)
    acceptance probabilities (0 where the trajectory went non-finite)."""
    z, log_p, log_q, g_p, g_q = state

    def log_f(lp, lq):
        return tau * lp + (1 - tau) * lq

    r = torch.randn_like(z)
    h0 = -log_f(log_p, log_q) + 0.5 * r.double().pow(2).sum(-1)
    r = r + 0.5 * step * (tau * g_p + (1 - tau) * g_q)
    zn = z
    for i in range(num_leapfrog):
        zn = zn + step * r
        lp, lq, gp, gq = target(zn)
        r = r + (1.0 if i < num_leapfrog - 1 else 0.5) * step * (tau * gp + (1 - tau) * gq)
    h1 = -log_f(lp, lq) + 0.5 * r.double().pow(2).sum(-1)
    prob = torch.exp(torch.clamp(h0 - h1, max=0.0))
    prob = torch.where(torch.isfinite(prob), prob, torch.zeros_like(prob))
    take = torch.rand_like(prob) < prob
    new = tuple(torch.where(take.view(take.shape + (1,) * (new.dim() - 2)), new, old)
                for new, old in zip((zn, lp, lq, gp, gq), state))
    return new, prob


class StepSizePilot:
    """Per-example step sizes ε(τ), adapted on chains of their own (docs/evaluation.rst)."""

    def __init__(self, n: int, device, target_accept: float, init: float = 0.25,
                 rate: float = 0.5):
        self.log_eps = torch.full((n,), math.log(init), dtype=torch.float64, device=device)
        self.target, self.rate, self.temperatures, self.table = target_accept, rate, [], []

    def current(self, t: int, tau: float) -> torch.Tensor:
        """The pilot's own ε for its next step."""
        return self.log_eps.exp()

    def adapt(self, t: int, tau: float, accept: torch.Tensor) -> None:
        """log ε += rate·(acceptance − target); remember ε at this τ."""
        self.log_eps = self.log_eps + self.rate * (accept - self.target)
        self.temperatures.append(tau)
        self.table.append(self.log_eps)

    def frozen(self) -> Callable:
        """ε(τ) for the main run: the pilot's ε at the nearest τ it visited."""
        if not self.temperatures:
            return self.current
        temperatures, table = self.temperatures, torch.stack(self.table)

        def step_size(t: int, tau: float) -> torch.Tensor:
            nearest = min(range(len(temperatures)), key=lambda i: abs(temperatures[i] - tau))
            return table[nearest].exp()

        return step_size


def guide_scale(guide, call: tuple, pdim: int, layout: Layout) -> torch.Tensor:
    """The guide's per-example, per-coordinate standard deviation from SCALE_DRAWS draws, (B, D)."""
    tr = chain_trace(guide, call, pdim, SCALE_DRAWS)
    return layout.flatten({n: tr.nodes[n]["value"] for n in layout.names}).std(0).clamp_min(1e-6)
