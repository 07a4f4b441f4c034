"""The VAE as a Pyro program: ``model(x)`` and ``guide(x)`` over the ``"data"`` plate.

This is the only module that calls ``pyro.sample`` for the sites ``"z"`` and ``"x"``.
The prior, likelihood and guide are modules chosen by name from the registries in
:mod:`pvae.priors`, :mod:`pvae.likelihoods` and :mod:`pvae.guides`.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import pyro
import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from torch import nn

from .errors import ConfigError, DataError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .priors import PRIORS


def beta_handler(beta: float):
    """The effect handler that multiplies a site's log-density by β.

    β = 1 is a no-op, β > 0 is ``poutine.scale(scale=β)``, and β = 0 is
    ``poutine.mask(mask=False)`` (``poutine.scale`` refuses a zero scale), which removes
    the site's log-density from the objective while keeping its sample.
    """
    beta = float(beta)
    if not beta >= 0 or beta != beta or beta == float("inf"):
        raise ConfigError(f"beta must be a finite number >= 0, got {beta}")
    if beta == 1.0:
        return contextlib.nullcontext()
    if beta == 0.0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=beta)


class VAE(PyroModule):
    """A VAE with prior p(z), likelihood p(x|z) and guide q(z|x).

    The model is ``z ~ p(z)``, ``x ~ p(x|z)`` for every example in the ``"data"`` plate;
    the guide is ``z ~ q(z|x)``. With ``beta`` ≠ 1 the ``"z"`` site is scaled in both the
    model and the guide, so ``Trace_ELBO`` minimises E_q[-log p(x|z)] + β·KL(q(z|x) || p(z)).

    The prior, likelihood and guide stay plain ``torch.nn`` modules. ``model`` issues one
    ``pyro.param`` statement per parameter of the prior and the likelihood, ``guide`` one per
    parameter of the guide, under the names of ``named_parameters()`` (``"q.net.body.0.weight"``),
    so ``pyro.infer.SVI`` with a ``pyro.optim`` optimizer trains the VAE like any Pyro
    program. Inside :meth:`direct_params` they issue none: ``pvae.train.fit`` optimises
    ``vae.parameters()`` with one torch optimizer and skips those messages (two per weight
    and bias of every layer, each through the whole handler stack, at every step).

    Args:
        prior, likelihood, guide: modules (see the registries).
        x_dim: the size of one flattened example; ``"x"`` has event shape ``(x_dim,)``.
        num_data: the dataset size N. Needed by guides that own per-example parameters:
            the plate then has size N and each batch's indices as ``subsample``, so the
            ELBO of a batch of B is scaled by N/B.
    """

    def __init__(self, prior: nn.Module, likelihood: nn.Module, guide: nn.Module, x_dim: int,
                 num_data: int | None = None, beta: float = 1.0):
        super().__init__()
        self.x_dim = int(x_dim)
        self.z_dim = int(prior.z_dim)
        self.num_data = num_data
        self.prior = prior
        self.likelihood = likelihood
        self.q = guide
        self._direct = 0
        if callable(getattr(self.q, "bind", None)):
            self.q.bind(self.prior, self.likelihood)
        self.beta = beta

    @property
    def beta(self) -> float:
        """β, the weight of the KL term; setting it validates it."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        beta_handler(value)
        self._beta = float(value)

    @property
    def needs_index(self) -> bool:
        """True when the guide owns per-example parameters and needs dataset indices."""
        return bool(getattr(self.q, "needs_index", False))

    @contextlib.contextmanager
    def direct_params(self):
        """Within this context ``model`` and ``guide`` issue no ``pyro.param`` statements.

        For optimisers that hold ``vae.parameters()`` themselves (``pvae.train.fit``):
        Pyro's param store then neither sees nor updates the VAE's weights.
        """
        self._direct += 1
        try:
            yield self
        finally:
            self._direct -= 1

    def _param_statements(self, *parts: str) -> None:
        """``pyro.param(name, p)`` for every trainable parameter of the submodules ``parts``.

        The module's tensor is the parameter: a stale entry of the same name in Pyro's param
        store (left by a VAE built earlier in this process) is replaced by it, so that
        ``pyro.optim`` updates the tensors this VAE computes with.
        """
        store = pyro.get_param_store()
        for part in parts:
            for name, p in getattr(self, part).named_parameters(prefix=part):
                if not p.requires_grad:
                    continue
                if name in store and store[name].unconstrained() is not p:
                    del store[name]
                pyro.param(name, p)

    def _plate(self, x: torch.Tensor, idx: torch.Tensor | None):
        if idx is None:
            if self.needs_index:
                raise DataError("this guide owns per-example parameters: pass the dataset "
                                "indices of the batch as idx")
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", self.num_data or x.shape[0], subsample=idx)

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p(z), x ~ p(x|z), each example in the ``"data"`` plate; returns z."""
        if not self._direct:
            self._param_statements("prior", "likelihood")
        pz = self.prior()
        with self._plate(x, idx):
            with beta_handler(self._beta):
                z = pyro.sample("z", pz)
            pyro.sample("x", self.likelihood(z), obs=x)
        return z

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ q(z|x), each example in the ``"data"`` plate; returns z."""
        if not self._direct:
            self._param_statements("q")
        with self._plate(x, idx):
            with beta_handler(self._beta):
                return pyro.sample("z", self.q(x, idx))

    def check_data(self, x: torch.Tensor, probabilities: bool = False) -> None:
        """Raise DataError unless ``x`` is a finite ``(B, x_dim)`` tensor in the likelihood's support.

        With ``probabilities=True`` ``x`` holds the probabilities of binary data that is drawn
        from them later (``fit(binarize=True)``): every value must lie in [0, 1]. That check is
        a single pass (``torch.aminmax``: NaN propagates, ±Inf falls outside [0, 1]).
        """
        if not isinstance(x, torch.Tensor):
            raise DataError(f"data must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise DataError(f"data must have shape (batch, {self.x_dim}) (flattened examples), "
                            f"got {tuple(x.shape)}; flatten each image with x.reshape(len(x), -1)")
        if probabilities:
            lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
            if lo != lo or hi != hi:
                raise DataError("data contains NaN values; clean or drop those examples")
            if lo < 0 or hi > 1:
                raise DataError(f"training data must lie in [0, 1] to be binarized (Bernoulli "
                                f"probabilities), got values in [{lo:g}, {hi:g}]; rescale the "
                                "images, e.g. x / 255")
            return
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"data contains {int((~torch.isfinite(x)).sum())} NaN/Inf values; "
                            "clean or drop those examples")
        self.likelihood.check(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z] at one sample z ~ q(z|x) (the image a reconstruction figure shows)."""
        return self.likelihood.mean(self.q(x, idx).sample())

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """E[x|z] for ``n`` draws z ~ p(z)."""
        return self.likelihood.mean(self.prior().sample((n,)))


def _pick(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(registry))}")
    return registry[name]


def build_vae(prior: str = "standard", guide: str = "mlp", likelihood: str = "bernoulli",
              z_dim: int = 50, hidden_dims: Sequence[int] = (200, 200), x_dim: int = 784,
              activation: str = "tanh", num_data: int | None = None, beta: float = 1.0,
              **options: object) -> VAE:
    """Build a :class:`VAE` from registry names; the default is the IWAE paper's 1-layer VAE.

    ``options`` reach every part's constructor (each takes what it knows: e.g. the number
    of mixture components or flow steps). The guide is built first and handed to the prior
    as ``guide=``, for priors that share the encoder (the VampPrior).
    """
    if int(z_dim) < 1:
        raise ConfigError(f"z_dim must be >= 1, got {z_dim}")
    common = dict(z_dim=int(z_dim), x_dim=int(x_dim), hidden_dims=tuple(hidden_dims),
                  activation=activation, num_data=num_data, **options)
    q = _pick(GUIDES, "guide", guide)(**common)
    p = _pick(PRIORS, "prior", prior)(guide=q, **common)
    lik = _pick(LIKELIHOODS, "likelihood", likelihood)(**common)
    return VAE(p, lik, q, x_dim=x_dim, num_data=num_data, beta=beta)
