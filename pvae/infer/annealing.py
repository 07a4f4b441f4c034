"""Annealed importance sampling (AIS; Neal 2001) of log p(x) per example, along f_τ =
q(z|x)^(1−τ) p(x, z)^τ from the guide to the posterior by HMC moves, with E[w] = p(x) and
log p̂(x) = logsumexp_c log w_c − log C; and bidirectional Monte Carlo (BDMC; Grosse et al. 2015)
(the kernel, its step-size pilot and the bounds: docs/evaluation.rst)."""
import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from ..checks import check_count
from ..errors import ConfigError
from ..progress import progress_bar
from .hmc import CompiledDensities, StepSizePilot, Target, guide_scale, latent_names, transition
from .host import Host, frozen_parameters, map_examples, plain_twin, prepare_examples
from .logweights import check_pair, summed_pairs
from .results import Estimate, psis_khat

log = logging.getLogger(__name__)
DEFAULT_AIS_CHUNK = 4096
CUDA_AIS_CHUNK = 2**16
PILOT_CHAINS = 4
LARGE_BUDGET = 10**7
"""Gradient evaluations (examples × chains × moves × leapfrog steps) above which AIS says up
front how much work its budget asks for."""


def schedule(num_steps: int, kind: str = "sigmoid", *, delta: float = 4.0) -> torch.Tensor:
    """τ_0 = 0 < … < τ_T = 1, float64: ``"linear"`` t/T or ``"sigmoid"`` σ(δ(2t/T − 1)) rescaled."""
    num_steps = check_count("num_steps (T)", num_steps)
    t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind != "sigmoid":
        raise ConfigError(f"schedule must be 'sigmoid' or 'linear', got {kind!r}")
    s = torch.sigmoid(delta * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


def _anneal(target: Target, z0: torch.Tensor, temperatures: torch.Tensor, step_size: Callable,
            scale: torch.Tensor, num_leapfrog: int, bar, adapt: Callable | None = None):
    """The (C, B) float64 log-weights and (B,) mean acceptance of the chains from z0 along
    ``temperatures``, ε (B,) from ``step_size(t, τ)``; ``adapt(t, τ, acceptance)``: the pilot's."""
    state = (z0, *target(z0))
    log_w = torch.zeros(z0.shape[:2], dtype=torch.float64, device=z0.device)
    accept = torch.zeros(z0.shape[1], dtype=torch.float64, device=z0.device)
    taus = temperatures.tolist()  # read once: the loop below reads nothing back from the device
    steps = len(taus) - 1
    for t in range(1, steps + 1):
        log_w += (taus[t] - taus[t - 1]) * (state[1] - state[2])
        if t < steps:
            tau = taus[t]
            state, prob = transition(target, state, tau,
                                     (step_size(t, tau)[:, None] * scale).to(z0), num_leapfrog)
            a = prob.mean(0)
            accept += a
            if adapt is not None:
                adapt(t, tau, a)
        bar.update(1)
    return log_w, accept / (steps - 1)  # T = 1 makes no move: 0 / 0, NaN


@dataclass(frozen=True)
class AISResult(Estimate):
    """Per-example ``log_px``, (n, C) ``log_weights`` and HMC ``accept_rate`` (float64, CPU)."""

    log_px: torch.Tensor
    log_weights: torch.Tensor
    accept_rate: torch.Tensor
    num_steps: int
    num_chains: int
    num_leapfrog: int
    schedule: str
    METRICS = (("test_log_px_ais", "log_px", True), ("ais_steps", "num_steps", False),
               ("ais_chains", "num_chains", False), ("ais_leapfrog_steps", "num_leapfrog", False),
               ("ais_accept_rate", "accept_rate", True), ("ais_seconds", "seconds", False),
               ("ais_cpu_seconds", "cpu_seconds", False), ("ais_n_test", "n", False),
               ("ais_khat_max", "khat_max", False), ("ais_khat_frac_bad", "khat_frac_bad", False),
               ("ais_chain_stderr", "chain_stderr", False))

    @property
    def chain_stderr(self) -> torch.Tensor:
        """Per-example s.e. of log p̂(x) across chains, sd(w)/(√C·mean(w)); NaN for one chain."""
        w = torch.exp(self.log_weights - self.log_weights.max(1, keepdim=True).values)
        if self.num_chains < 2:
            return torch.full((self.n,), math.nan, dtype=w.dtype)
        return w.std(1) / (math.sqrt(self.num_chains) * w.mean(1))

    @functools.cached_property
    def khat(self) -> np.ndarray:
        """PSIS k-hat of each example's C final weights (NaN below 25 chains: no tail fit)."""
        return psis_khat(self.log_weights.numpy())


def _compiled(compile: bool | str, host: Host | None, model, guide, call: tuple
              ) -> CompiledDensities | None:
    """The run's :class:`~pvae.infer.hmc.CompiledDensities` for ``compile`` (True: inductor, or
    a torch.compile backend's name), None (logged) where there is no plain twin to compile."""
    if not compile:
        return None
    if plain_twin(host, model, guide, call) is None:
        log.warning("AIS: compile needs host=vae and the VAE's own model and guide; this pair "
                    "is traced by Pyro, uncompiled")
        return None
    return CompiledDensities("inductor" if compile is True else str(compile))


def _announce(n: int, chains: int, steps: int, leapfrog: int, passes: int, chunk: int) -> None:
    """Say up front, in one log line, how much work a large AIS budget asks for."""
    work = n * chains * max(steps - 1, 1) * leapfrog
    if work >= LARGE_BUDGET:
        log.info("AIS on %d example(s): %d chains x %d HMC moves x %d leapfrog steps = %.1e "
                 "gradient evaluations, in %d pass(es) of at most %d chains (chunk_size); "
                 "fewer chains or steps finish sooner", n, chains, max(steps - 1, 1), leapfrog,
                 work, passes, chunk)


def _run(model, guide, x, args, kwargs, *, num_steps, num_chains, num_leapfrog, schedule_kind,
         target_accept, chunk_size, progress, desc, host, exact=None, compile=False,
         pdim=None) -> AISResult:
    """AIS over all examples in passes, timed; given ``exact`` ((B, ...) latent draws per site)
    the chains start there, anneal τ = 1 → 0 and ``log_px`` is −(logsumexp_c log w_c − log C).
    ``pdim``: the particle dim of :func:`check_pair`, found here (drawing from the RNG) if None."""
    temperatures = schedule(num_steps, schedule_kind)
    check_count("num_chains (C)", num_chains)
    check_count("num_leapfrog (L)", num_leapfrog)
    check_count("chunk_size", chunk_size, allow_none=True)
    if not 0 < target_accept < 1:
        raise ConfigError(f"target_accept must lie in (0, 1), got {target_accept}")
    start, cpu = time.perf_counter(), time.process_time()
    pdim = check_pair(model, guide, x, *args, **kwargs).particle_dim if pdim is None else pdim
    chunk = chunk_size or (CUDA_AIS_CHUNK if x.device.type == "cuda" else DEFAULT_AIS_CHUNK)
    group = min(num_chains, chunk)  # chains annealed together: a pass holds ≤ chunk chains
    per_pass = max(1, chunk // group)
    groups = range(0, num_chains, group)
    pilot_steps = max(10, num_steps // 10) if num_steps > 1 else 0
    passes = range(0, x.shape[0], per_pass)
    _announce(x.shape[0], num_chains, num_steps, num_leapfrog, len(passes) * len(groups), chunk)
    weights, accepts = [], []
    bar = progress_bar(total=len(passes) * (len(groups) * num_steps + pilot_steps), desc=desc,
                       unit="steps", enabled=progress)
    compiled = _compiled(compile, host, model, guide, (x, args, kwargs))
    with frozen_parameters(host), pyro.validation_enabled(False), bar:
        for b0 in passes:
            call = map_examples(lambda t: t[b0:b0 + per_pass], x, *args, **kwargs)
            b, program = call[0].shape[0], plain_twin(host, model, guide, call)
            with torch.no_grad():
                target = Target(model, guide, call, pdim, group, program, compiled)
                scale = guide_scale(guide, call, pdim, target.layout)
            pilot = StepSizePilot(b, x.device, target_accept)
            if pilot_steps:
                with torch.no_grad():
                    pilot_target = Target(model, guide, call, pdim,
                                          min(PILOT_CHAINS, num_chains), program, compiled)
                _anneal(pilot_target, pilot_target.z0, schedule(pilot_steps, schedule_kind),
                        pilot.current, scale, num_leapfrog, bar, adapt=pilot.adapt)
            log_w, acc = [], 0.0
            for c0 in groups:
                chains = min(group, num_chains - c0)
                if c0:
                    with torch.no_grad():
                        target = Target(model, guide, call, pdim, chains, program, compiled)
                z0, path = target.z0, temperatures
                if exact is not None:
                    rows = {k: v[b0:b0 + b].expand((chains, *v[b0:b0 + b].shape))
                            for k, v in exact.items()}
                    z0, path = target.layout.flatten(rows), temperatures.flip(0)
                w, a = _anneal(target, z0, path, pilot.frozen(), scale, num_leapfrog, bar)
                log_w.append(w.cpu())
                acc = acc + a.cpu() * (chains / num_chains)
            weights.append(torch.cat(log_w).T)
            accepts.append(acc)
    log_w = torch.cat(weights)
    log_px = torch.logsumexp(log_w, dim=1) - math.log(num_chains)
    return AISResult(log_px if exact is None else -log_px, log_w, torch.cat(accepts), num_steps,
                     num_chains, num_leapfrog, schedule_kind,
                     seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)


def ais(model: Callable, guide: Callable, x: torch.Tensor, *args, num_steps: int = 500,
        num_chains: int = 16, num_leapfrog: int = 10, schedule: str = "sigmoid",
        target_accept: float = 0.65, chunk_size: int | None = None, progress: bool = False,
        host: Host | None = None, compile: bool | str = False, **kwargs) -> AISResult:
    """AIS log p(x) per example, T = ``num_steps``, C = ``num_chains``, L = ``num_leapfrog``;
    a pass holds at most ``chunk_size`` chains × examples (the chains of one example in several
    passes when they are more). ``compile`` (True: inductor, or a backend's name): with
    ``host=vae`` and its own pair, the leapfrog steps' log-joint and log q and their
    z-gradients are compiled by torch.compile, a graph per pass shape. Enumerated discrete
    sites are summed exactly: one AIS run per value v, chain c's weight w_c = Σ_v w_cv."""
    x, args, kwargs = prepare_examples(host, x, *args, **kwargs)
    structure = check_pair(model, guide, x, *args, **kwargs)
    pairs = summed_pairs(model, guide, structure)
    runs = [_run(m, g, x, args, kwargs, num_steps=num_steps, num_chains=num_chains,
                 num_leapfrog=num_leapfrog, schedule_kind=schedule, target_accept=target_accept,
                 chunk_size=chunk_size, progress=progress, host=host, compile=compile,
                 pdim=structure.particle_dim,
                 desc=f"AIS T={num_steps}, C={num_chains}" + (f", value {v + 1}/{len(pairs)}"
                                                              if len(pairs) > 1 else ""))
            for v, (m, g) in enumerate(pairs)]
    if len(runs) == 1:
        return runs[0]
    log_w = torch.stack([r.log_weights for r in runs]).logsumexp(0)
    return AISResult(torch.logsumexp(log_w, dim=1) - math.log(num_chains), log_w,
                     torch.stack([r.accept_rate for r in runs]).mean(0), num_steps, num_chains,
                     num_leapfrog, schedule, seconds=sum(r.seconds for r in runs),
                     cpu_seconds=sum(r.cpu_seconds for r in runs))


def ais_log_likelihood(model: Callable, guide: Callable, x: torch.Tensor, *args,
                       num_steps: int = 500, num_chains: int = 16, **kwargs) -> torch.Tensor:
    """AIS log p(x) per example, (B,) float64 on the CPU: :func:`ais`'s ``log_px``."""
    return ais(model, guide, x, *args, num_steps=num_steps, num_chains=num_chains,
               **kwargs).log_px


@dataclass(frozen=True)
class BDMCResult(Estimate):
    """Simulated ``x`` and per-example bounds ``lower`` ≤ log p(x) ≤ ``upper`` (:func:`bdmc`)."""

    x: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    forward: AISResult
    reverse: AISResult
    MAIN = "lower"
    METRICS = (("bdmc_lower", "lower", True), ("bdmc_upper", "upper", True),
               ("bdmc_gap", "gap", True), ("bdmc_steps", "forward.num_steps", False),
               ("bdmc_chains", "forward.num_chains", False), ("bdmc_n", "n", False),
               ("bdmc_accept_rate", "forward.accept_rate", False),
               ("bdmc_seconds", "seconds", False), ("bdmc_cpu_seconds", "cpu_seconds", False))

    @property
    def gap(self) -> torch.Tensor:
        """upper − lower per example: how far from log p(x) AIS at this budget can be."""
        return self.upper - self.lower


def bdmc(model: Callable, guide: Callable, x: torch.Tensor, *args, num_steps: int = 500,
         num_chains: int = 16, num_leapfrog: int = 10, schedule: str = "sigmoid",
         target_accept: float = 0.65, chunk_size: int | None = None, progress: bool = False,
         host: Host | None = None, compile: bool | str = False, **kwargs) -> BDMCResult:
    """Stochastic bounds ``lower`` (forward AIS) ≤ log p(x′) ≤ ``upper`` (reverse AIS from the
    exact z) on x′ simulated from the model, ``x`` giving only the examples' number and shape
    (ConfigError unless the model observes one site fed by x); options as in :func:`ais`."""
    x, args, kwargs = prepare_examples(host, x, *args, **kwargs)
    if check_pair(model, guide, x, *args, **kwargs).enumerated:
        raise ConfigError("BDMC does not handle enumerated discrete sites (its reverse chains "
                          "would start at the exact latents of every value); use AIS (method "
                          "ais), which sums them exactly", "method")
    with torch.no_grad(), pyro.validation_enabled(False):
        observed = [n for n, s in poutine.trace(model).get_trace(x, *args, **kwargs).nodes.items()
                    if s["type"] == "sample" and s["is_observed"]]
        sim = poutine.trace(poutine.uncondition(model)).get_trace(x, *args, **kwargs)
    if len(observed) != 1 or sim.nodes[observed[0]]["value"].numel() != x.numel():
        raise ConfigError(f"BDMC simulates x from the model's one observed site fed by x; this "
                          f"model observes {observed}")
    x_sim = sim.nodes[observed[0]]["value"].detach().reshape(x.shape).to(x.dtype)
    exact = {n: sim.nodes[n]["value"].detach() for n in latent_names(sim) if n not in observed}
    options = dict(num_steps=num_steps, num_chains=num_chains, num_leapfrog=num_leapfrog,
                   target_accept=target_accept, chunk_size=chunk_size, progress=progress,
                   host=host, compile=compile)
    forward = ais(model, guide, x_sim, *args, schedule=schedule, **options, **kwargs)
    reverse = _run(model, guide, x_sim, args, kwargs, schedule_kind=schedule, exact=exact,
                   desc=f"BDMC reverse T={num_steps}, C={num_chains}", **options)
    return BDMCResult(x_sim, forward.log_px, reverse.log_px, forward, reverse,
                      seconds=forward.seconds + reverse.seconds,
                      cpu_seconds=forward.cpu_seconds + reverse.cpu_seconds)
