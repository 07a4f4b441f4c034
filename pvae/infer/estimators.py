"""The estimators of log p(x), registered by name in :data:`ESTIMATORS` (a new estimator is one
module and one entry here), and the settings of their budgets (:class:`EvalConfig`)."""
from dataclasses import dataclass
from typing import Callable

from ..checks import setting, validate
from .annealing import ais, bdmc
from .importance import PROPOSALS, importance_sampling
from .results import Estimate


@dataclass(frozen=True)
class EvalConfig:
    """How a run scores its model: the method and the budgets of IS, AIS and the local fits."""

    method: str = setting("is", "is: importance sampling of log p(x); ais: also AIS on the "
                          "first --ais-subset test images; bdmc: also BDMC on as many images "
                          "simulated from the model", choices=lambda: tuple(ESTIMATORS))
    eval_samples: int = setting(1000, "importance samples per test image for log p(x) (5000 "
                                "is the published protocol)", low=1, metavar="K")
    proposal: str = setting("encoder", "is: draw from the encoder q(z|x), or from ½q + ½q* "
                            "with q* fitted to each image", choices=lambda: PROPOSALS)
    chunk_size: int | None = setting(None, "latent draws (samples or chains x images) per "
                                     "pass; bounds memory (default: by device)", low=1,
                                     metavar="M")
    ais_steps: int = setting(500, "ais/bdmc: intermediate distributions", low=1, metavar="T")
    ais_chains: int = setting(16, "ais/bdmc: chains per image", low=1, metavar="C")
    ais_leapfrog: int = setting(10, "ais/bdmc: leapfrog steps per HMC move", low=1,
                                metavar="L")
    ais_subset: int = setting(100, "ais/bdmc in a training run: the first N test images", low=1,
                              metavar="N")
    elbo_samples: int = setting(1000, "gap: samples per image for L[q] and L[q*]", low=1,
                                metavar="S")
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


def _importance(model, guide, x, config: EvalConfig, host, progress, **kwargs) -> Estimate:
    refine = {k: v for k, v in config.local_fit(x.shape[0]).items() if k != "init"}
    return importance_sampling(model, guide, x, num_samples=config.eval_samples,
                               chunk_size=config.chunk_size, proposal=config.proposal,
                               refine_options=refine, host=host, progress=progress, **kwargs)


def _annealed(estimate: Callable[..., Estimate]) -> Callable[..., Estimate]:
    return lambda model, guide, x, config, host, progress, **kwargs: estimate(
        model, guide, x, num_steps=config.ais_steps, num_chains=config.ais_chains,
        num_leapfrog=config.ais_leapfrog, chunk_size=config.chunk_size, host=host,
        progress=progress, **kwargs)


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
