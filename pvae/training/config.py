"""The training section of a run's configuration: what shapes the optimisation besides the
model. ``fit`` takes it as one value; a resumed run must agree with it (:meth:`TrainConfig.
differences`). The recipe (:mod:`pvae.training.recipes`) is one of its settings; the rate,
Adam's ε, the schedule and the warm-up it implies are read from it, never copied."""
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..checks import SEED_LIMIT, setting, validate
from ..errors import ConfigError
from ..infer.objectives import OBJECTIVES
from .recipes import RECIPES, Recipe, warmup_epochs

DEFAULT_LR = 1e-3


@dataclass(frozen=True)
class TrainConfig:
    """SVI with Adam: ``epochs`` × ``batch_size``, rate ``lr``, objective ``loss`` with
    ``num_particles`` samples, β warm-up over ``beta_warmup_epochs``, a ``recipe`` compressed to
    ``schedule_epochs`` (default ``epochs``); ``seed`` None leaves the RNGs alone; ``compile``
    trains with :class:`~pvae.training.compiled.CompiledStep`."""

    epochs: int = setting(40, "passes over the training set", low=1)
    batch_size: int = setting(100, "examples per step (the global batch under torchrun)", low=1)
    lr: float = setting(DEFAULT_LR, "Adam's learning rate", low=0.0, above=True)
    loss: str = setting("elbo", "the objective", choices=lambda: sorted(OBJECTIVES))
    num_particles: int = setting(1, "samples of z per example per step", low=1)
    beta_warmup_epochs: float = setting(0.0, "ramp β linearly from 0 over this many epochs "
                                        "(per step)", low=0.0)
    recipe: str = setting("quick", "the training schedule (docs: recipes): " + "; ".join(
        f"{r.name}: {r.summary}" for r in RECIPES.values()), choices=lambda: tuple(RECIPES))
    schedule_epochs: float | None = setting(None, "the epochs the recipe's schedule and "
                                            "warm-up span (default: --epochs)", low=0.0,
                                            above=True)
    seed: int | None = setting(None, "seed of every RNG of the run", low=0, high=SEED_LIMIT)
    binarize: bool | None = setting(None, "binarize each training batch afresh (default: for "
                                    "a binary likelihood)")
    compile: bool = setting(False, "train with the compiled step: Trace_ELBO's (or IWAE's) loss "
                            "and gradients without Pyro's tracing, by torch.compile, and CUDA "
                            "graphs on a GPU (docs: training)")

    def __post_init__(self) -> None:
        validate(self)
        if self.beta_warmup_epochs > self.horizon:
            span = "epochs" if self.schedule_epochs is None else "schedule_epochs"
            raise ConfigError(f"beta_warmup_epochs must be between 0 and {span} "
                              f"({self.horizon:g}), got {self.beta_warmup_epochs:g}",
                              "beta_warmup_epochs", span)
        recipe = self.recipe_values
        if recipe.lr is not None and not math.isclose(self.lr, DEFAULT_LR) \
                and self.lr != recipe.lr:
            raise ConfigError(f"recipe {recipe.name} sets the learning rate ({recipe.lr:g}); "
                              f"drop lr {self.lr:g} or use recipe quick", "lr", "recipe")
        if recipe.warmup_fraction is not None and self.beta_warmup_epochs:
            raise ConfigError(f"recipe {recipe.name} sets the KL warm-up; drop "
                              "beta_warmup_epochs or use recipe quick", "beta_warmup_epochs",
                              "recipe")

    @property
    def recipe_values(self) -> Recipe:
        """The :class:`~pvae.training.recipes.Recipe` named by ``recipe``."""
        return RECIPES[self.recipe]

    @property
    def rate(self) -> float:
        """The learning rate the optimiser starts at: the recipe's, else ``lr``."""
        return self.recipe_values.lr or self.lr

    @property
    def adam_eps(self) -> float:
        """Adam's ε, the recipe's."""
        return self.recipe_values.adam_eps

    @property
    def lr_schedule(self) -> str:
        """The learning-rate schedule, the recipe's."""
        return self.recipe_values.lr_schedule

    @property
    def horizon(self) -> float:
        """The epochs the schedule and the warm-up are spread over."""
        return float(self.schedule_epochs or self.epochs)

    @property
    def warmup(self) -> float:
        """The KL warm-up in epochs: the recipe's share of :attr:`horizon`, or the setting."""
        return warmup_epochs(self.recipe_values, self.horizon, self.beta_warmup_epochs)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)

    def differences(self, saved: "TrainConfig") -> list[tuple[str, Any, Any]]:
        """``(setting, this, saved)`` for each setting in which resuming ``saved``'s run with
        this configuration would optimise differently (``epochs`` may grow, not the horizon;
        ``compile`` computes the same loss and gradients)."""
        keys = [f.name for f in dataclasses.fields(self)
                if f.name not in ("epochs", "schedule_epochs", "beta_warmup_epochs", "compile")]
        mine = {k: getattr(self, k) for k in keys}
        theirs = {k: getattr(saved, k) for k in keys}
        mine["beta_warmup_epochs"], theirs["beta_warmup_epochs"] = self.warmup, saved.warmup
        if self.lr_schedule != "constant" or saved.lr_schedule != "constant":
            mine["schedule_epochs"], theirs["schedule_epochs"] = self.horizon, saved.horizon
        return [(k, mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]]
