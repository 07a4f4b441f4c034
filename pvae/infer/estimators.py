"""The estimators of log p(x), registered by name in :data:`ESTIMATORS` (a new estimator is one
module and one entry here), and the settings of their budgets (:class:`EvalConfig`)."""
from dataclasses import dataclass
from typing import Callable

from ..checks import setting, validate
from ..errors import ConfigError
from .annealing import ais, bdmc
from .host import Encoder, Host
from .importance import PROPOSALS, fitted_proposal, importance_sampling
from .results import Estimate


@dataclass(frozen=True)
class EvalConfig:
    """How a run scores its model: the method and the budgets of IS, AIS and the local fits."""

    method: str = setting("is", "is: importance sampling of log p(x); ais: also AIS on the "
                          "first --ais-subset test images; bdmc: also BDMC on as many images "
                          "simulated from the model", choices=lambda: tuple(ESTIMATORS))
    eval_samples: int = setting(1000, "importance samples per test image for log p(x) (5000 "
                                "is the published protocol)", low=1, metavar="K")
    proposal: str = setting("encoder", "is: draw from the encoder q(z|x) (encoder), from ½q + "
                            "½q* with q* fitted to each image from q (refined), or from ½q* + "
                            "½t₃(q*) fitted from N(0, I) (local: the one for a model without "
                            "encoder)", choices=lambda: PROPOSALS)
    chunk_size: int | None = setting(None, "latent draws (samples, or chains x images) per "
                                     "pass: bounds the memory of IS and AIS (default: 8192, "
                                     "AIS 4096; more on CUDA)", low=1, metavar="M")
    ais_steps: int = setting(500, "ais/bdmc: intermediate distributions", low=1, metavar="T")
    ais_chains: int = setting(16, "ais/bdmc: chains per image", low=1, metavar="C")
    ais_leapfrog: int = setting(10, "ais/bdmc: leapfrog steps per HMC move", low=1,
                                metavar="L")
    ais_compile: bool = setting(False, "ais/bdmc: the VAE's log-joint and log q and their "
                                "gradients compiled by torch.compile for the leapfrog steps "
                                "(docs: evaluation)")
    ais_subset: int = setting(100, "ais/bdmc in a training run: the first N test images", low=1,
                              metavar="N")
    elbo_samples: int = setting(1000, "samples per image for L[q*] (the test ELBO of a model "
                                "without encoder; pvae gap: L[q] too)", low=1, metavar="S")
    local_init: str = setting("encoder", "local fits: start from the encoder's output or from "
                              "N(0, I)", choices=lambda: ("encoder", "prior"))
    local_steps: int = setting(5000, "local fits: Adam steps at most", low=1)
    local_lr: float = setting(1e-2, "local fits: Adam's rate", low=0.0, above=True)
    local_particles: int = setting(16, "local fits: samples per image per step", low=1)
    local_window: int = setting(50, "local fits: steps averaged per convergence check", low=1)
    local_patience: int = setting(5, "local fits: stop after this many windows without "
                                  "improvement", low=1)
    local_seconds: float = setting(10.0, "local fits: wall-time budget per image, seconds",
                                   low=0.0, above=True, metavar="S")

    def __post_init__(self) -> None:
        validate(self)

    def local_fit(self, n: int) -> dict:
        """The keyword arguments of :func:`~pvae.infer.localfit.fit_local` for ``n`` images."""
        return dict(init=self.local_init, max_steps=self.local_steps, lr=self.local_lr,
                    num_particles=self.local_particles, window=self.local_window,
                    patience=self.local_patience, max_seconds=self.local_seconds * n)


def without_encoder(host: Host | None) -> bool:
    """Whether ``host``'s guide has no encoder for new data (per-example parameters)."""
    return isinstance(host, Encoder) and not host.amortized


def _fit_options(config: EvalConfig, n: int) -> dict:
    return {**{k: v for k, v in config.local_fit(n).items() if k != "init"},
            "elbo_samples": config.elbo_samples}


def _importance(model, guide, x, config: EvalConfig, host, progress, **kwargs
                ) -> Estimate:
    proposal = config.proposal
    if without_encoder(host):
        if proposal == "refined":
            raise ConfigError("proposal refined starts from an encoder, and this model was "
                              "trained without one: its test proposal is proposal local",
                              "proposal")
        proposal = "local"
    return importance_sampling(model, guide, x, num_samples=config.eval_samples,
                               chunk_size=config.chunk_size, proposal=proposal,
                               refine_options=_fit_options(config, x.shape[0]), host=host,
                               progress=progress, warn=False, **kwargs)


def _annealed(estimate: Callable[..., Estimate]) -> Callable[..., Estimate]:
    """AIS or BDMC with the run's budget; for a model without encoder AIS's chains start from
    q* fitted to each image from N(0, I) (BDMC's simulated images would need fits of their
    own, so it refuses)."""
    def run(model, guide, x, config: EvalConfig, host, progress, **kwargs) -> Estimate:
        args = ()
        if without_encoder(host):
            if estimate is bdmc:
                raise ConfigError("BDMC on a model trained without an encoder is not "
                                  "implemented (each simulated image would need its own local "
                                  "fit); use method ais", "method")
            model, guide, args, _ = fitted_proposal(
                model, x, host, init="prior", mixed=False, progress=progress,
                **{**_fit_options(config, x.shape[0]), "elbo_samples": 1})
        return estimate(model, guide, x, *args, num_steps=config.ais_steps,
                        num_chains=config.ais_chains, num_leapfrog=config.ais_leapfrog,
                        chunk_size=config.chunk_size, host=host, progress=progress,
                        compile=config.ais_compile, **kwargs)
    return run


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: ``run(model, guide, x, config, host, progress, **kwargs) ->
    Estimate`` (``kwargs``, such as labels ``y``, go to the model and guide), the files a run
    writes (``figure``, ``per_example`` ``.npy``) and methods run before (``also``)."""

    name: str
    run: Callable[..., Estimate]
    summary: str
    figure: str
    per_example: str
    also: tuple[str, ...] = ()


ESTIMATORS: dict[str, Estimator] = {
    "is": Estimator("is", _importance, "importance sampling with PSIS k-hat", "evaluation.png",
                    "test_log_px.npy"),
    "ais": Estimator("ais", _annealed(ais), "annealed importance sampling (HMC)", "ais.png",
                     "test_log_px_ais.npy"),
    "bdmc": Estimator("bdmc", _annealed(bdmc), "BDMC bounds on images simulated from the model",
                      "bdmc.png", "bdmc_lower.npy", also=("ais",)),
}
