"""Training recipes (docs/training.rst): named presets of the schedule, never of the model.
A published recipe of P epochs run for E compresses its time axis by E/P: each stage of the
learning-rate decay and the warm-up keeps its share of the run's optimisation steps."""
from dataclasses import dataclass

import torch

from ..errors import ConfigError

BURDA_STAGES = 8
"""Burda et al.'s schedule: 3^i epochs at rate lr·10^(−i/7) for i = 0 … 7 (3,280 epochs)."""
SCHEDULES = ("constant", "burda")


@dataclass(frozen=True)
class Recipe:
    """A training schedule. ``lr`` and ``warmup_fraction`` None: the caller's ``lr`` and
    ``beta_warmup_epochs`` stand; else the learning rate is ``lr`` and β rises linearly from 0
    over ``warmup_fraction`` of the run. ``pseudo_inputs="data"`` starts a VampPrior's
    pseudo-inputs at distinct training images (``"random"``: the prior's own start)."""

    name: str
    summary: str
    published_epochs: int | None = None
    lr: float | None = None
    adam_eps: float = 1e-8
    lr_schedule: str = "constant"
    warmup_fraction: float | None = None
    pseudo_inputs: str = "random"


RECIPES: dict[str, Recipe] = {
    "quick": Recipe("quick", "the flags as given: constant --lr, Adam ε = 1e-8, the warm-up of "
                    "--beta-warmup-epochs"),
    "burda2016": Recipe("burda2016", "Burda, Grosse & Salakhutdinov (2016): Adam ε = 1e-4, "
                        "3^i epochs at lr 1e-3·10^(−i/7), i = 0…7 (3,280 epochs)",
                        published_epochs=3280, lr=1e-3, adam_eps=1e-4, lr_schedule="burda",
                        warmup_fraction=0.0),
    "tomczak2018": Recipe("tomczak2018", "Tomczak & Welling (2018): constant lr 5e-4, KL "
                          "warm-up over 100 of 2,000 epochs, pseudo-inputs started at "
                          "training images", published_epochs=2000, lr=5e-4,
                          warmup_fraction=100 / 2000, pseudo_inputs="data"),
}


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; ConfigError naming the choices for an unknown one."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]


def burda_factor(progress: float) -> float:
    """10^(−i/7) for the stage i = 0 … 7 that holds ``progress`` ∈ [0, 1] of the run, stage i
    lasting 3^i/3280 of it (stage boundaries at (3^(i+1) − 1)/2 of 3,280 epochs)."""
    total = (3 ** BURDA_STAGES - 1) // 2
    at = max(0.0, progress) * total
    stage = next((i for i in range(BURDA_STAGES) if at < (3 ** (i + 1) - 1) // 2),
                 BURDA_STAGES - 1)
    return 10.0 ** (-stage / 7)


class StepSchedule:
    """The learning-rate factor at optimisation step t of a run of ``total_steps`` steps
    (a picklable ``lr_lambda`` for ``torch.optim.lr_scheduler.LambdaLR``)."""

    def __init__(self, kind: str, total_steps: int):
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown lr_schedule {kind!r}; choose one of: "
                              f"{', '.join(SCHEDULES)}")
        self.kind, self.total_steps = kind, max(1, int(total_steps))

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return 1.0
        return burda_factor(step / self.total_steps)


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :class:`StepSchedule`; stepped once per optimisation step, its
    ``state_dict()`` (plain numbers) is part of the training state."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, StepSchedule(kind, total_steps))


def warmup_epochs(recipe: Recipe, epochs: float, asked: float) -> float:
    """The warm-up, in epochs, of ``recipe`` over a budget of ``epochs``: ``asked`` (the
    caller's) when the recipe leaves it open, else its fraction of the budget."""
    if recipe.warmup_fraction is None:
        return float(asked)
    return recipe.warmup_fraction * float(epochs)


def beta_at(step: int, beta: float, warmup_steps: int) -> float:
    """β at optimisation step (not epoch) ``step``: β·min(1, step / warmup_steps); β without one."""
    if warmup_steps <= 0:
        return float(beta)
    return float(beta) * min(1.0, step / warmup_steps)
