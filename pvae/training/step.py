"""One optimisation step of SVI on a VAE: the loss and gradients of ``pyro.infer.SVI(...).step``
with one fused ``torch.optim.Adam`` over the VAE's parameters."""
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from torch import nn

from ..errors import ConfigError
from ..model.vae import VAE


def make_optimizer(vae: VAE, lr: float, eps: float = 1e-8,
                   capturable: bool = False) -> torch.optim.Adam:
    """One ``torch.optim.Adam`` (fused where torch can) over the VAE's trainable parameters:
    the update ``pyro.optim.Adam`` applies per parameter. ``capturable``: safe inside a CUDA
    graph, its learning rate a tensor on the VAE's device (the schedule fills it in place)."""
    params = [p for p in vae.parameters() if p.requires_grad]
    try:
        optimizer = torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, ValueError):
        optimizer = torch.optim.Adam(params, lr=lr, eps=eps)
    if capturable:
        make_capturable(optimizer, vae.device)
    return optimizer


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Every group capturable in a CUDA graph, its learning rate a tensor on ``device`` (a
    resumed optimiser's saved groups may hold neither)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)


class LossModule(nn.Module):
    """``scale`` · ``objective``'s loss of ``vae``: what DDP wraps to all-reduce the gradients."""

    def __init__(self, vae: VAE, objective: pyro.infer.ELBO, scale: float = 1.0):
        super().__init__()
        self.vae, self.objective, self.scale = vae, objective, float(scale)

    def forward(self, *args) -> torch.Tensor:
        loss = self.objective.differentiable_loss(self.vae.model, self.vae.guide, *args)
        return loss * self.scale if self.scale != 1.0 else loss


def refuse_foreign_params(param_sites: dict, owned: set) -> None:
    """ConfigError naming the first ``pyro.param`` site whose value is not in ``owned``."""
    for name, site in param_sites.items():
        value = site["value"]
        if getattr(value, "unconstrained", lambda: value)() not in owned:
            raise ConfigError(f"pyro.param {name!r} is not a parameter of the VAE's modules, so "
                              "fit cannot optimise it; make it an nn.Parameter of a module or "
                              "train with pyro.infer.SVI")


def make_step(vae: VAE, objective: pyro.infer.ELBO, optimizer: torch.optim.Optimizer,
              loss_module: nn.Module | None = None) -> Callable[..., torch.Tensor]:
    """``step(*args) -> loss`` (detached, left on the device): one gradient step on ``objective``
    for ``vae``, with the loss and gradients of ``pyro.infer.SVI(...).step`` and one Adam;
    ConfigError at the first step for a ``pyro.param`` outside the VAE's modules.
    ``loss_module`` (DDP) all-reduces the gradients."""
    model, guide = vae.model, vae.guide
    compute = loss_module or (lambda *args: objective.differentiable_loss(model, guide, *args))
    owned = {p for group in optimizer.param_groups for p in group["params"]}
    optimizer.zero_grad(set_to_none=True)
    checked = False

    def step(*args) -> torch.Tensor:
        nonlocal checked
        if checked:
            with vae.direct_params():
                loss = compute(*args)
        else:
            with poutine.trace(param_only=True) as capture, vae.direct_params():
                loss = compute(*args)
            refuse_foreign_params(capture.trace.nodes, owned)
            checked = True
        if loss.requires_grad:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step
