"""Importance-sampled log p(x) ≈ logsumexp_k log w_k − log K per example, the test ELBO
≈ mean_k log w_k and PSIS k-hat, from the guide, or from a q* fitted to each example: ½q + ½q*
(``"refined"``), or ½q* + ½t₃(q*) with L[q*] as the ELBO (``"local"``, a model without
encoder) (the math: docs/evaluation.rst, docs/amortization.rst)."""
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyro
import torch

from ..checks import check_count
from ..errors import ConfigError
from ..progress import progress_bar
from .host import Encoder, Host, HostCopy, map_examples, prepare_examples
from .localfit import TAILS, LocalFit, fit_local
from .logweights import check_pair, default_chunk_size, log_weights
from .results import KHAT_BAD, Estimate, psis_khat

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100
PROPOSALS = ("encoder", "refined", "local")


@dataclass(frozen=True)
class EvalResult(Estimate):
    """Per-example float64 ``log_px``, ``elbo``, ``ess`` = (Σ_k w_k)² / Σ_k w_k² and ``khat``."""

    log_px: np.ndarray
    elbo: np.ndarray
    ess: np.ndarray
    khat: np.ndarray
    num_samples: int
    proposal: str = "encoder"
    fit: LocalFit | None = None
    METRICS = (("test_elbo", "elbo", True), ("test_log_px", "log_px", True),
               ("eval_samples", "num_samples", False), ("n_test", "n", False),
               ("psis_khat_max", "khat_max", False), ("psis_khat_frac_bad", "khat_frac_bad", False),
               ("eval_proposal", "proposal", False), ("eval_seconds", "seconds", False),
               ("eval_cpu_seconds", "cpu_seconds", False), ("eval_fit_steps", "fit_steps", False),
               ("eval_fit_converged", "fit_converged", False),
               ("eval_fit_seconds_per_image", "fit_seconds", False))

    @property
    def fit_steps(self) -> int | None:
        """Steps of the per-image fits behind the proposal (None for the guide's own)."""
        return None if self.fit is None else self.fit.steps

    @property
    def fit_converged(self) -> bool | None:
        """Whether those fits met their stopping rule before their budget."""
        return None if self.fit is None else self.fit.converged

    @property
    def fit_seconds(self) -> float | None:
        """Wall seconds of those fits per image: what a model pays at test time for them."""
        return None if self.fit is None else self.fit.seconds / self.n

    @property
    def elbo_mean(self) -> float:
        """Mean ELBO estimate over the examples."""
        return self.mean("elbo")

    def warning(self) -> str | None:
        """What to say when some examples have k-hat > 0.7 (None when none has)."""
        if not self.khat_frac_bad > 0:
            return None
        return (f"PSIS k-hat > {KHAT_BAD} for {int(round(self.khat_frac_bad * self.n))} of "
                f"{self.n} examples (max {self.khat_max:.2f}): the log p(x) estimate for those "
                "examples is unreliable, because the guide's tails are too light for the "
                "posterior and a few huge importance weights dominate; raise K or improve the "
                "guide")


def _batches(model, guide, x, args, kwargs, num_samples, chunk_size, batch_size, host):
    """K, x and a lazy iterator of the (K, b) log-weights of each ``batch_size`` examples."""
    num_samples = check_count("num_samples (K)", num_samples)
    chunk = check_count("chunk_size (latent draws per pass)", chunk_size, allow_none=True)
    x, args, kwargs = prepare_examples(host, x, *args, **kwargs)
    chunk = chunk or default_chunk_size(x.device)
    structure = check_pair(model, guide, x, *args, **kwargs)
    step = batch_size or max(1, chunk // num_samples)

    def weights():
        for start in range(0, x.shape[0], step):
            xb, a, kw = map_examples(lambda t: t[start:start + step], x, *args, **kwargs)
            yield log_weights(model, guide, xb, num_samples, *a, chunk_size=chunk,
                              structure=structure, **kw)

    return num_samples, x, weights()


def log_likelihood(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int,
                   chunk_size: int | None = None, host: Host | None = None,
                   **kwargs) -> torch.Tensor:
    """Importance-sampled log p(x) per example, (B,) float64 on x's device; ``chunk_size``
    bounds the latent draws per pass."""
    num_samples, _, batches = _batches(model, guide, x, args, kwargs, num_samples, chunk_size,
                                       None, host)
    with torch.no_grad(), pyro.validation_enabled(False):
        lse = torch.cat([torch.logsumexp(lw, dim=0) for lw in batches])
    return (lse - math.log(num_samples)).to(x.device)


def fitted_proposal(model: Callable, x: torch.Tensor, host: Encoder, *, init: str = "encoder",
                    mixed: bool = True, progress: bool = False,
                    **fit_options) -> tuple[Callable, Callable, tuple, LocalFit]:
    """``(model, proposal, args, fit)`` for ``log_likelihood(model, proposal, x, *args)``, q*
    fitted to each example of ``x`` with ``fit_options`` against the model of ``host`` (a VAE):
    from its encoder (``init="encoder"``, the proposal ½q(z|x) + ½q*, the refined one) or from
    N(0, I) (``"prior"``, ½q* + ½t₃(q*), for a model without encoder); q* alone if not
    ``mixed``."""
    if init == "encoder" and not (isinstance(host, Encoder) and host.amortized):
        raise ConfigError("proposal 'refined' starts each fit from the encoder: pass host=vae "
                          "of a VAE with an amortized guide (one without: proposal 'local')",
                          "proposal")
    fit = fit_local(model, x, host=host, init=init, progress=progress, **fit_options)
    idx = torch.arange(x.shape[0], device=fit.loc.device)
    proposal = fit.guide() if not mixed else fit.guide(host.q) if init == "encoder" else \
        fit.guide(tails=TAILS)
    return (lambda x_, idx_: model(x_)), proposal, (idx,), fit


def importance_sampling(model: Callable, guide: Callable, x: torch.Tensor, *args,
                        num_samples: int, chunk_size: int | None = None,
                        batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
                        proposal: str = "encoder", refine_options: dict | None = None,
                        host: Host | None = None, warn: bool = True, **kwargs) -> EvalResult:
    """log p(x), ELBO, ESS and k-hat per example from the same K draws, ``batch_size`` examples
    at a time; with ``warn``, logs :meth:`EvalResult.warning`. ``proposal`` ``"refined"`` or
    ``"local"`` draws from :func:`fitted_proposal`'s (it needs ``host``; ``refine_options`` go
    to its fits); the ELBO is then the refined proposal's, or the fitted L[q*] (``"local"``)."""
    if proposal not in PROPOSALS:
        raise ConfigError(f"proposal must be one of {PROPOSALS}, got {proposal!r}", "proposal")
    start, cpu, fit = time.perf_counter(), time.process_time(), None
    if proposal != "encoder":
        if args or kwargs:
            raise ConfigError(f"proposal={proposal!r} takes the model, the guide and x only")
        x = prepare_examples(host, x)[0]
        options = {"elbo_samples": 1, **(refine_options or {})}
        model, guide, args, fit = fitted_proposal(
            model, x, host, init="encoder" if proposal == "refined" else "prior",
            progress=progress, **options)
    batch_size = check_count("batch_size", batch_size)
    num_samples, x, batches = _batches(model, guide, x, args, kwargs, num_samples, chunk_size,
                                       batch_size, host)
    rows, khats, copies = [], [], []  # per batch: log p(x), ELBO, ESS (device), k-hat (host)
    with torch.no_grad(), pyro.validation_enabled(False), \
            progress_bar(total=x.shape[0], enabled=progress, desc=f"log p(x), K={num_samples}",
                         unit="images") as bar:
        for lw in itertools.chain(batches, [None]):  # k-hat one batch behind: no queue drains
            if lw is not None:
                lse = torch.logsumexp(lw, dim=0)
                ess = torch.exp(2 * lse - torch.logsumexp(2 * lw, dim=0))
                rows.append((lse - math.log(num_samples), lw.mean(0), ess))
                copies.append(HostCopy(lw.T))
            if len(copies) > (lw is not None):
                done = copies.pop(0).numpy()
                khats.append(psis_khat(done))
                bar.update(done.shape[0])
    log_px, elbo, ess = (torch.cat(column).cpu().numpy() for column in zip(*rows))
    if proposal == "local":
        elbo = fit.elbo.detach().cpu().double().numpy()
    result = EvalResult(log_px, elbo, ess, np.concatenate(khats), num_samples=num_samples,
                        proposal=proposal, fit=fit, seconds=time.perf_counter() - start,
                        cpu_seconds=time.process_time() - cpu)
    if warn and result.warning():
        logger.warning("%s", result.warning())
    return result
