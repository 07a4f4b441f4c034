"""The model's own configuration: registry names, sizes, options and β (docs/quickstart.rst)."""
import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import pyro.poutine as poutine
from torch import nn

from ..checks import as_dict, from_dict, real_number, setting, validate
from ..errors import ConfigError
from .guides import GUIDES
from .hierarchy import UpperLayer
from .labels import SUPERVISIONS, Classifier
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS
from .parts import declared_options, shared_arguments, split_options
from .priors import PRIORS

REGISTRIES = {"prior": PRIORS, "guide": GUIDES, "likelihood": LIKELIHOODS}
TWO_LAYER_REFUSED = {
    ("prior", "vamp"): "the VampPrior mixes the encoder q(z|x) at its pseudo-inputs, and the "
                       "top latent z2 has no such encoder",
    ("guide", "local"): "two stochastic layers are built for amortized guides only",
    ("guide", "semi"): "its refinement runs p(z) and p(x|z), and p(z) is not one distribution "
                       "with two layers"}
"""(role, name) of parts that ``stochastic_layers=2`` refuses, and why."""
FLAT_INPUT = "its encoder reads x as an image, not the vector [x, one-hot(y)]"
LABEL_REFUSED = {
    ("guide", "conv"): FLAT_INPUT, ("guide", "local"): "it has no encoder of (x, y)",
    ("guide", "semi"): "its refinement runs p(x|z) without the label",
    ("prior", "vamp"): "its pseudo-inputs go through q(z|x), which now reads (x, y)",
    ("stochastic_layers", 2): "two stochastic layers are built for unlabelled data only"}
"""(setting, value) that a supervision other than ``"none"`` refuses, and why."""
ALPHA = 50.0


def check_beta(beta: Any) -> float:
    """β as a float; ConfigError unless it is a finite number >= 0."""
    value = real_number(beta)
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"beta must be a finite number >= 0, got {beta!r}", "beta")
    return value


def beta_handler(beta: float):
    """The handler that multiplies a site's log-density by β (at β = 0 ``poutine.mask``)."""
    beta = check_beta(beta)
    if beta == 1.0:
        return contextlib.nullcontext()
    if beta == 0.0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=beta)


def all_options() -> dict[str, list[tuple[str, str, Any]]]:
    """``{option: [(role, part name, default), ...]}`` over every registered part."""
    out: dict[str, list] = {}
    for role, registry in REGISTRIES.items():
        for name, cls in sorted(registry.items()):
            for option, default in declared_options(cls).items():
                out.setdefault(option, []).append((role, name, default))
    return out


@dataclass(frozen=True)
class VAEConfig:
    """Everything that determines a VAE; ``options`` is read-only, each of its declared type."""

    prior: str | None = setting("standard", "the prior p(z)", choices=lambda: sorted(PRIORS))
    guide: str | None = setting("mlp", "the guide q(z|x)", choices=lambda: sorted(GUIDES))
    likelihood: str | None = setting("bernoulli", "the likelihood p(x|z)",
                                     choices=lambda: sorted(LIKELIHOODS))
    z_dim: int = setting(50, "latent units (of the bottom layer)", low=1)
    hidden_dims: tuple[int, ...] = setting((200, 200), "hidden widths of the encoder and "
                                           "decoder MLPs", low=1, metavar="H")
    activation: str = setting("tanh", "the nets' activation", choices=lambda: sorted(ACTIVATIONS))
    stochastic_layers: int = setting(1, "2: the IWAE paper's two-layer model, z2 -> z -> x",
                                     choices=lambda: (1, 2))
    top_z_dim: int = setting(50, "two layers: units of the top latent z2", low=1)
    top_hidden_dims: tuple[int, ...] = setting((100, 100), "two layers: widths of the MLPs of "
                                               "p(z|z2) and q(z2|z)", low=1, metavar="H")
    beta: float = setting(1.0, "weight of the KL term (poutine.scale on the latent sites)",
                          low=0.0)
    supervision: str = setting("none", "labels: none; conditional: p(x|z,y) and q(z|x,y), y "
                               "given (Sohn et al. 2015); semi: M2, p(y)p(z)p(x|y,z) with q(y|x) "
                               "q(z|x,y), y summed by enumeration where unlabelled (Kingma et al. "
                               "2014)", choices=lambda: SUPERVISIONS)
    alpha: float = setting(ALPHA, "semi: weight α of the classifier's loss −α·log q(y|x) per "
                           "labelled example (poutine.scale)", low=0.0)
    x_dim: int = setting(784, "values per example", low=1, flag=False)
    image_shape: tuple[int, ...] | None = setting(None, "one example's shape", low=1, flag=False)
    num_data: int | None = setting(None, "training examples (a local guide's rows)", low=1,
                                   flag=False)
    num_classes: int | None = setting(None, "classes of the label y (read from the data)",
                                      low=2, flag=False)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        custom = [getattr(self, role) is None for role in REGISTRIES]
        if any(custom) and not all(custom):
            raise ConfigError("prior, guide and likelihood are all registry names, or all None "
                              "(a VAE of one's own modules)")
        validate(self)
        if self.image_shape is not None and (len(self.image_shape) > 2 or
                                             math.prod(self.image_shape) != self.x_dim):
            raise ConfigError(f"image_shape must be (H, W) or (x_dim,) with H·W = x_dim = "
                              f"{self.x_dim}, got {self.image_shape!r}", "image_shape")
        for (role, name), why in TWO_LAYER_REFUSED.items():
            if self.stochastic_layers == 2 and getattr(self, role) == name:
                raise ConfigError(f"{role} {name!r} cannot be used with two stochastic layers: "
                                  f"{why}; use one layer, or another {role}", role)
        for (role, name), why in LABEL_REFUSED.items():
            if self.supervision != "none" and getattr(self, role) == name:
                raise ConfigError(f"{role} {name!r} cannot be used with supervision "
                                  f"{self.supervision!r}: {why}; use supervision none, or "
                                  f"another {role}", role, "supervision")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"options must be a mapping of names to values, got {self.options!r}")
        merged = {k: v for opts in split_options(self.parts(), self.options).values()
                  for k, v in opts.items()}
        object.__setattr__(self, "options", MappingProxyType(dict(sorted(merged.items()))))

    @property
    def custom(self) -> bool:
        """True for a VAE assembled from one's own modules (no registry names)."""
        return self.prior is None

    def parts(self) -> dict[str, tuple[str, type]]:
        """``{role: (registry name, class)}`` for the prior, guide and likelihood."""
        if self.custom:
            return {}
        return {role: (getattr(self, role), REGISTRIES[role][getattr(self, role)])
                for role in REGISTRIES}

    def replace(self, **changes) -> "VAEConfig":
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of str/int/float/bool/list values (JSON and checkpoint safe)."""
        return {**as_dict(self), "options": {k: list(v) if isinstance(v, tuple) else v
                                             for k, v in self.options.items()}}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], strict: bool = True) -> "VAEConfig":
        """The inverse of :meth:`to_dict`; a key that is no field is an error if ``strict``."""
        return from_dict(cls, dict(values), strict)

    def build(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        """New ``(prior, likelihood, guide)`` modules, the guide handed to the prior."""
        if self.custom:
            raise ConfigError("this configuration names no parts (a VAE of one's own modules): "
                              "build the modules in Python")
        options, made = split_options(self.parts(), self.options), {}
        labels = self.label_classes()
        for role in ("guide", "prior", "likelihood"):
            cls = REGISTRIES[role][getattr(self, role)]
            args = {k: made["guide"] if k == "guide" else getattr(self, k)
                    for k in shared_arguments(cls)}
            if role == "prior" and self.stochastic_layers == 2:
                args["z_dim"] = self.top_z_dim
            widened = {"guide": "x_dim", "likelihood": "z_dim"}.get(role)
            if labels and widened in args:
                args[widened] += labels
            made[role] = cls(**args, **options[role])
        return made["prior"], made["likelihood"], made["guide"]

    def label_classes(self) -> int:
        """K, the classes of y the nets read (one-hot), 0 without supervision; ConfigError
        when a supervised model does not know K."""
        if self.supervision == "none":
            return 0
        if self.num_classes is None:
            raise ConfigError(f"supervision {self.supervision!r} needs the number of classes of "
                              "the labels: build_vae(..., num_classes=K) (a run reads it from "
                              "the data)", "num_classes")
        return self.num_classes

    def build_classifier(self) -> Classifier | None:
        """A new classifier q(y|x) for the semi-supervised model, else None."""
        if self.supervision != "semi":
            return None
        return Classifier(self.x_dim, self.label_classes(), self.hidden_dims, self.activation)

    def build_upper(self) -> UpperLayer | None:
        """A new :class:`~pvae.model.hierarchy.UpperLayer` with two stochastic layers, else None."""
        return (UpperLayer(self.z_dim, self.top_z_dim, self.top_hidden_dims, self.activation)
                if self.stochastic_layers == 2 else None)
