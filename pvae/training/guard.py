"""The NaN/Inf guard of :func:`pvae.training.loop.run_epoch`: an epoch's losses stay on the
device and are read every :data:`CHECK_EVERY` steps and at the epoch's end, before its checkpoint
is written, so a diverged run stops with its last good checkpoint intact and no step waits for
the device."""
from pathlib import Path

import torch
from torch import nn

from ..errors import DivergenceError
from . import distributed

CHECK_EVERY = 50
"""Steps between the loop's reads of the loss from the device (the guard, the progress bar)."""


def diverged(what: str, epoch: int, step: int, good: Path | None) -> None:
    """Raise the DivergenceError of ``what`` at ``epoch``/``step``, naming the checkpoint kept."""
    kept = (f"the last good checkpoint is kept at {good}" if good and good.exists()
            else "no checkpoint was written yet")
    raise DivergenceError(f"training diverged at epoch {epoch}, step {step}: {what}; {kept}. "
                          "Lower lr, raise batch_size, or check the data", "lr", "batch_size")


class EpochLosses:
    """An epoch's per-step losses, kept on the device and read every :data:`CHECK_EVERY` steps
    and at the epoch's end (:meth:`check`): the NaN/Inf guard without a host sync per step."""

    def __init__(self, steps: int, epoch: int, first_step: int, device: torch.device,
                 path: Path | None, ddp: nn.Module | None = None):
        self.epoch, self.first_step, self.path, self.ddp = epoch, first_step, path, ddp
        self.values = torch.zeros(steps, dtype=torch.float64, device=device)
        self.factors: list[float] = []
        self.counts: list[int] = []
        self.checked, self.total, self.seen = 0, 0.0, 0

    def add(self, loss: torch.Tensor | float, factor: float, count: int) -> None:
        if len(self.factors) == len(self.values):
            self.values = torch.cat([self.values, torch.zeros_like(self.values)])
        self.values[len(self.factors)] = loss
        self.factors.append(factor)
        self.counts.append(count)

    def check(self) -> None:
        """Add the unread steps' Σ_i −ELBO_i (over the ranks) to :attr:`total`; DivergenceError
        naming the first step whose loss is NaN/Inf, the last good checkpoint kept."""
        start, stop = self.checked, len(self.factors)
        if stop == start:
            return
        device = self.values.device
        factors = torch.tensor(self.factors[start:stop], dtype=torch.float64).to(device)
        count = torch.tensor([float(sum(self.counts[start:stop]))], dtype=torch.float64)
        summed = torch.cat([self.values[start:stop] * factors, count.to(device)])
        if self.ddp is not None:  # the global batch's sums: a NaN anywhere stops every rank
            summed[:-1] /= self.ddp.module.scale
            summed = distributed.sum_over_ranks(summed)
        summed = summed.cpu()
        bad = (~torch.isfinite(summed[:-1])).nonzero()
        if len(bad):
            at = int(bad[0])
            diverged(f"the loss is {float(summed[at])}", self.epoch,
                     self.first_step + start + at + 1, self.path)
        self.total += float(summed[:-1].sum())
        self.seen += int(summed[-1])
        self.checked = stop
