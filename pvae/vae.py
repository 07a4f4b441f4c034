"""The VAE as a Pyro program: ``model(x)`` and ``guide(x)`` over the ``"data"`` plate.

The only module that samples the sites ``"z"``, ``"z2"`` (the top latent of a two-layer VAE)
and ``"x"``; :class:`VAEConfig` is all a checkpoint needs to rebuild the VAE from the
registries of priors, likelihoods and guides.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import pyro
import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from torch import nn

from .errors import ConfigError, DataError
from .guides import GUIDES
from .hierarchy import TOP_SITE, UpperLayer
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS
from .parts import (Guide, Likelihood, Prior, coerce_option, real_number, shared_arguments,
                    split_options, whole_number)
from .priors import PRIORS

REGISTRIES = {"prior": PRIORS, "guide": GUIDES, "likelihood": LIKELIHOODS}
TWO_LAYER_REFUSED = {
    ("prior", "vamp"): "the VampPrior mixes the encoder q(z|x) at its pseudo-inputs, and the "
                       "top latent z2 has no such encoder",
    ("guide", "local"): "two stochastic layers are built for amortized guides only",
    ("guide", "semi"): "its refinement runs p(z) and p(x|z), and p(z) is not one distribution "
                       "with two layers"}
"""(role, name) of parts that ``stochastic_layers=2`` refuses, and why."""


def beta_handler(beta: float):
    """The handler that multiplies a site's log-density by β: ``poutine.scale``, or for β = 0
    (which ``poutine.scale`` refuses) ``poutine.mask(mask=False)``, which keeps the sample."""
    beta = check_beta(beta)
    if beta == 1.0:
        return contextlib.nullcontext()
    if beta == 0.0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=beta)


def check_beta(beta: Any) -> float:
    """β as a float; ConfigError unless it is a finite number >= 0."""
    value = real_number(beta)
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"beta must be a finite number >= 0, got {beta!r}")
    return value


@dataclass(frozen=True)
class VAEConfig:
    """Everything that determines a VAE's architecture: registry names, sizes and options.

    Frozen and checked on creation (unknown names, sizes that are not positive whole
    numbers and options no chosen part declares are ConfigErrors); ``options`` is read-only,
    each value of its declared type. β weights the objective and lives on the VAE.
    ``image_shape`` is the shape of one example before flattening, (H, W) or (x_dim,)
    (None: a square image if x_dim is a square number); ``dataset`` names the data the VAE
    is trained on (``mnist``, ``fashion-mnist``, ``kmnist`` or a path), for reloading it.

    ``stochastic_layers=2`` adds the top latent z2 of :class:`pvae.hierarchy.UpperLayer`
    (``top_z_dim`` units, its MLPs ``top_hidden_dims`` wide): ``prior`` is then p(z2) and
    ``z_dim`` the size of the bottom latent z (the IWAE paper: z_dim 100, top_z_dim 50).
    """

    prior: str = "standard"
    guide: str = "mlp"
    likelihood: str = "bernoulli"
    z_dim: int = 50
    hidden_dims: tuple[int, ...] = (200, 200)
    x_dim: int = 784
    activation: str = "tanh"
    num_data: int | None = None
    stochastic_layers: int = 1
    top_z_dim: int = 50
    top_hidden_dims: tuple[int, ...] = (100, 100)
    options: Mapping[str, Any] = field(default_factory=dict)
    image_shape: tuple[int, ...] | None = None
    dataset: str | None = None

    def __post_init__(self) -> None:
        for role, registry in {**REGISTRIES, "activation": ACTIVATIONS}.items():
            if getattr(self, role) not in registry:
                raise ConfigError(f"unknown {role} {getattr(self, role)!r}; choose one of: "
                                  f"{', '.join(sorted(registry))}")
        sizes = {"z_dim": (self.z_dim,), "x_dim": (self.x_dim,),
                 "hidden_dims": coerce_option("hidden_dims", self.hidden_dims, ()),
                 "num_data": () if self.num_data is None else (self.num_data,),
                 "stochastic_layers": (self.stochastic_layers,), "top_z_dim": (self.top_z_dim,),
                 "top_hidden_dims": coerce_option("top_hidden_dims", self.top_hidden_dims, ())}
        for name, values in sizes.items():
            values = tuple(whole_number(name, v) for v in values)
            if min(values, default=1 if name == "num_data" else 0) < 1:
                raise ConfigError(f"{name} must be positive whole number(s), "
                                  f"got {getattr(self, name)!r}")
            object.__setattr__(self, name, values if name.endswith("hidden_dims") else
                               (values[0] if values else None))
        if self.image_shape is not None:
            shape = coerce_option("image_shape", self.image_shape, ())
            shape = tuple(whole_number("image_shape", v) for v in shape)
            if not 1 <= len(shape) <= 2 or min(shape) < 1 or math.prod(shape) != self.x_dim:
                raise ConfigError(f"image_shape must be (H, W) or (x_dim,) with H·W = x_dim = "
                                  f"{self.x_dim}, got {self.image_shape!r}")
            object.__setattr__(self, "image_shape", shape)
        if self.dataset is not None and not isinstance(self.dataset, str):
            raise ConfigError(f"dataset must be a name or a path, got {self.dataset!r}")
        if self.stochastic_layers not in (1, 2):
            raise ConfigError(f"stochastic_layers must be 1 or 2, got {self.stochastic_layers}")
        for (role, name), why in TWO_LAYER_REFUSED.items():
            if self.stochastic_layers == 2 and getattr(self, role) == name:
                raise ConfigError(f"{role} {name!r} cannot be used with two stochastic layers: "
                                  f"{why}; use one layer, or another {role}")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"options must be a mapping of names to values, got {self.options!r}")
        merged = {k: v for opts in self.part_options().values() for k, v in opts.items()}
        object.__setattr__(self, "options", MappingProxyType(dict(sorted(merged.items()))))

    def parts(self) -> dict[str, tuple[str, type]]:
        """``{role: (registry name, class)}`` for the prior, guide and likelihood."""
        return {role: (getattr(self, role), REGISTRIES[role][getattr(self, role)])
                for role in REGISTRIES}

    def part_options(self) -> dict[str, dict[str, Any]]:
        """The options each part's constructor receives, by role."""
        return split_options(self.parts(), self.options)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of str/int/float/bool/list values (JSON and checkpoint safe)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["hidden_dims"] = list(self.hidden_dims)
        out["image_shape"] = None if self.image_shape is None else list(self.image_shape)
        out["top_hidden_dims"] = list(self.top_hidden_dims)
        out["options"] = {k: list(v) if isinstance(v, tuple) else v
                          for k, v in self.options.items()}
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "VAEConfig":
        """The inverse of :meth:`to_dict`; ConfigError for a key that is not a field."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown VAE configuration keys {unknown}; valid: {sorted(names)}")
        return cls(**values)

    def build(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        """New ``(prior, likelihood, guide)`` modules; the guide is handed to the prior. With
        two stochastic layers the prior is p(z2), of size ``top_z_dim``."""
        shared = {"z_dim": self.z_dim, "x_dim": self.x_dim, "hidden_dims": self.hidden_dims,
                  "activation": self.activation, "num_data": self.num_data,
                  "image_shape": self.image_shape}
        options = self.part_options()
        made: dict[str, nn.Module] = {}
        for role in ("guide", "prior", "likelihood"):
            cls = REGISTRIES[role][getattr(self, role)]
            args = {k: v for k, v in shared.items() if k in shared_arguments(cls)}
            if role == "prior" and self.stochastic_layers == 2:
                args["z_dim"] = self.top_z_dim
            if "guide" in shared_arguments(cls):
                args["guide"] = made["guide"]
            made[role] = cls(**args, **options[role])
        return made["prior"], made["likelihood"], made["guide"]

    def build_upper(self) -> UpperLayer | None:
        """A new :class:`pvae.hierarchy.UpperLayer` with two stochastic layers, else None."""
        if self.stochastic_layers == 1:
            return None
        return UpperLayer(self.z_dim, self.top_z_dim, self.top_hidden_dims, self.activation)


class VAE(PyroModule):
    """A VAE with prior p(z), likelihood p(x|z) and guide q(z|x) (:mod:`pvae.parts`); with an
    ``upper`` layer (:class:`pvae.hierarchy.UpperLayer`) two stochastic layers: z2 ~ p(z2) (the
    prior), z ~ p(z|z2), x ~ p(x|z), guided by q(z|x) q(z2|z).

    The latent sites are scaled by :attr:`kl_weight` in model and guide, so ``Trace_ELBO``
    minimises E_q[-log p(x|z)] + β·KL(q(z|x) || p(z)) (with two layers β·KL(q(z, z2|x) ||
    p(z, z2))). The parts stay ``torch.nn`` modules
    whose parameters ``model`` and ``guide`` state with ``pyro.param``, so ``pyro.infer.SVI``
    trains the VAE like any Pyro program. :attr:`config` is the :class:`VAEConfig` it was
    built from (None for one's own modules). ``num_data`` is the dataset size N of a guide
    with per-example parameters: the plate has size N, the batch's indices as ``subsample``.
    """

    def __init__(self, prior: nn.Module, likelihood: nn.Module, guide: nn.Module, x_dim: int,
                 num_data: int | None = None, beta: float = 1.0, config: VAEConfig | None = None,
                 upper: nn.Module | None = None):
        super().__init__()
        for part, protocol in ((prior, Prior), (likelihood, Likelihood), (guide, Guide)):
            if not isinstance(part, protocol):
                raise ConfigError(f"{type(part).__name__} lacks the attributes of a "
                                  f"pvae.parts.{protocol.__name__}; see its docstring")
        if upper is not None and (guide.uses_model or int(prior.z_dim) != int(upper.top_z_dim)):
            raise ConfigError(f"two stochastic layers need a prior p(z2) of the upper layer's "
                              f"size {upper.top_z_dim} (got {prior.z_dim}) and a guide that does "
                              "not run the model")
        self.x_dim = int(x_dim)
        self.z_dim = int(prior.z_dim if upper is None else upper.z_dim)
        self.num_data = num_data
        self.prior = prior
        self.likelihood = likelihood
        self.q = guide
        self.upper = upper
        self._direct = 0
        self._warmup = 1.0
        object.__setattr__(self, "config", config)
        if guide.uses_model:
            self.q.bind(self.prior, self.likelihood)
        self.beta = beta

    @classmethod
    def from_config(cls, config: VAEConfig, beta: float = 1.0) -> "VAE":
        """A new VAE (fresh weights from the global torch RNG) with ``config``'s architecture."""
        prior, likelihood, guide = config.build()
        return cls(prior, likelihood, guide, x_dim=config.x_dim, num_data=config.num_data,
                   beta=beta, config=config, upper=config.build_upper())

    @property
    def beta(self) -> float:
        """β, the weight of the KL term; its one home. Setting it validates it."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = check_beta(value)

    @property
    def kl_weight(self) -> float:
        """The scale on the latent sites now: β times the warm-up fraction (1 outside warm-up)."""
        return self._beta * self._warmup

    @contextlib.contextmanager
    def warmup(self, fraction: float):
        """Within this context the latent sites are scaled by ``fraction``·β (0 ≤ fraction ≤ 1)."""
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"a warm-up fraction must lie in [0, 1], got {fraction}")
        previous, self._warmup = self._warmup, float(fraction)
        try:
            yield self
        finally:
            self._warmup = previous

    @property
    def amortized(self) -> bool:
        """False when the guide owns per-example parameters and needs dataset indices."""
        return bool(self.q.amortized)

    @property
    def device(self) -> torch.device:
        """The device of the VAE's parameters and buffers (CPU when it has none)."""
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    @contextlib.contextmanager
    def direct_params(self):
        """Within this context ``model`` and ``guide`` issue no ``pyro.param`` statements, for
        optimisers that hold ``vae.parameters()`` themselves (``pvae.train.fit``)."""
        self._direct += 1
        try:
            yield self
        finally:
            self._direct -= 1

    def _param_statements(self, *parts: str) -> None:
        """``pyro.param(name, p)`` for each trainable parameter of ``parts``, replacing a stale
        store entry of that name (an earlier VAE's), so ``pyro.optim`` updates this VAE's."""
        store = pyro.get_param_store()
        for part in parts:
            if getattr(self, part) is None:
                continue
            for name, p in getattr(self, part).named_parameters(prefix=part):
                if not p.requires_grad:
                    continue
                if name in store and store[name].unconstrained() is not p:
                    del store[name]
                pyro.param(name, p)

    def _plate(self, x: torch.Tensor, idx: torch.Tensor | None):
        if idx is None:
            if not self.amortized:
                raise DataError("this guide owns per-example parameters: pass the dataset "
                                "indices of the batch as idx")
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", self.num_data or x.shape[0], subsample=idx)

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p(z) (two layers: z2 ~ p(z2), z ~ p(z|z2)), x ~ p(x|z), each example in the
        ``"data"`` plate; returns z."""
        if not self._direct:
            self._param_statements("prior", "likelihood", "upper")
        pz = self.prior()
        with self._plate(x, idx):
            with beta_handler(self.kl_weight):
                if self.upper is None:
                    z = pyro.sample("z", pz)
                else:
                    z = pyro.sample("z", self.upper.conditional(pyro.sample(TOP_SITE, pz)))
            pyro.sample("x", self.likelihood(z), obs=x)
        return z

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ q(z|x) (two layers: then z2 ~ q(z2|z)), each example in the ``"data"`` plate;
        returns z."""
        if not self._direct:
            self._param_statements("q", "upper")
        with self._plate(x, idx):
            with beta_handler(self.kl_weight):
                z = pyro.sample("z", self.q(x, idx))
                if self.upper is not None:
                    pyro.sample(TOP_SITE, self.upper.posterior(z))
        return z

    def check_data(self, x: torch.Tensor, probabilities: bool = False) -> None:
        """DataError unless ``x`` is a finite ``(B, x_dim)`` tensor in the likelihood's support,
        or with ``probabilities`` (``fit(binarize=True)``) one of values in [0, 1]."""
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
        """E[x|z] for ``n`` draws z ~ p(z) (two layers: z2 ~ p(z2), z ~ p(z|z2))."""
        z = self.prior().sample((n,))
        return self.likelihood.mean(z if self.upper is None else self.upper.conditional(z).sample())


def build_vae(prior: str = "standard", guide: str = "mlp", likelihood: str = "bernoulli",
              z_dim: int = 50, hidden_dims: Sequence[int] = (200, 200), x_dim: int = 784,
              activation: str = "tanh", num_data: int | None = None, beta: float = 1.0,
              image_shape: Sequence[int] | None = None,
              stochastic_layers: int = 1, top_z_dim: int = 50,
              top_hidden_dims: Sequence[int] = (100, 100), **options: Any) -> VAE:
    """Build a :class:`VAE` from registry names; the default is the IWAE paper's 1-layer VAE.

    The arguments become ``vae.config``; ``options`` go to the parts that declare them
    (e.g. ``num_components`` of the ``mog`` prior, ``conv_channels`` of a ``conv`` guide and
    decoder). ``image_shape`` (H, W) with H·W = ``x_dim`` shapes the convolutional nets and
    the figures of non-square images. ``stochastic_layers=2`` with ``z_dim=100`` is the
    paper's 2-layer VAE.
    """
    config = VAEConfig(prior=prior, guide=guide, likelihood=likelihood, z_dim=z_dim,
                       hidden_dims=hidden_dims, x_dim=x_dim, activation=activation,
                       num_data=num_data, options=options,
                       image_shape=None if image_shape is None else tuple(image_shape),
                       stochastic_layers=stochastic_layers, top_z_dim=top_z_dim,
                       top_hidden_dims=top_hidden_dims)
    return VAE.from_config(config, beta=beta)
