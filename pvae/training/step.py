"""One optimisation step of SVI on a VAE: the loss and gradients of ``pyro.infer.SVI(...).step``
with one fused ``torch.optim.Adam`` over the VAE's parameters; with labels, the loss of
:func:`batch_loss`."""
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from torch import nn

from ..errors import ConfigError
from ..infer.objectives import make_loss
from ..model.labels import classifier_term
from ..model.vae import VAE


def _no_guide(*args, **kwargs) -> None:
    """The guide of a model without latent sites (the classifier's term)."""


def batch_loss(vae: VAE, objective: pyro.infer.ELBO) -> Callable[..., torch.Tensor]:
    """``loss(*args, **kwargs)``, the objective's differentiable loss of ``vae`` on a batch.
    With labels ``loss(x, y=None, labelled=None, labelled_scale=1)`` = −ELBO(x, y) (semi, y
    None: y summed by the enumerating ``objective``) + ``labelled_scale``·(−ELBO(x_l, y_l)) of
    ``labelled=(x_l, y_l)``; semi: each labelled term with −α·Σ log q(y|x) added (M2's J^α)."""
    model, guide = vae.model, vae.guide
    if vae.supervision == "none":
        return lambda *args: objective.differentiable_loss(model, guide, *args)
    observed = objective
    if vae.supervision == "semi":  # with y observed there is nothing to enumerate
        observed = make_loss("elbo", objective.num_particles)
    classify = pyro.infer.Trace_ELBO()

    def term(x, y):
        loss = observed.differentiable_loss(model, guide, x, y=y)
        if vae.supervision == "semi" and vae.config.alpha > 0:
            loss = loss + classify.differentiable_loss(classifier_term, _no_guide, vae, x, y)
        return loss

    def loss(x, y=None, labelled=None, labelled_scale=1.0) -> torch.Tensor:
        total = objective.differentiable_loss(model, guide, x) if y is None else term(x, y)
        return total if labelled is None else total + labelled_scale * term(*labelled)

    return loss


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
        self.compute = batch_loss(vae, objective)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        loss = self.compute(*args, **kwargs)
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
    """``step(*args, **kwargs) -> loss`` (detached, left on the device): one gradient step on
    ``objective`` for ``vae`` (the loss of :func:`batch_loss`), with the loss and gradients of
    ``pyro.infer.SVI(...).step`` and one Adam; ConfigError at the first step for a
    ``pyro.param`` outside the VAE's modules.
    ``loss_module`` (DDP) all-reduces the gradients."""
    compute = loss_module or batch_loss(vae, objective)
    owned = {p for group in optimizer.param_groups for p in group["params"]}
    optimizer.zero_grad(set_to_none=True)
    checked = False

    def step(*args, **kwargs) -> torch.Tensor:
        nonlocal checked
        if checked:
            with vae.direct_params():
                loss = compute(*args, **kwargs)
        else:
            with poutine.trace(param_only=True) as capture, vae.direct_params():
                loss = compute(*args, **kwargs)
            refuse_foreign_params(capture.trace.nodes, owned)
            checked = True
        if loss.requires_grad:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step
