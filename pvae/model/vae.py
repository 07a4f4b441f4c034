"""The VAE as a Pyro program, the only module that samples ``"z"``, ``"z2"`` and ``"x"``: it carries
its :class:`~pvae.model.config.VAEConfig` and is the :class:`pvae.infer.host.Host` of inference."""
import contextlib
from typing import Any, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ..distributions import shared_flows
from ..errors import ConfigError
from ..infer.sites import Site, SiteRecorder
from .config import VAEConfig, beta_handler, check_beta
from .hierarchy import TOP_SITE
from .inputs import check_examples
from .labels import LABEL_SITE, check_labels, join_label
from .parts import Guide, Likelihood, Prior


class VAE(PyroModule):
    """A VAE with prior p(z), likelihood p(x|z) and guide q(z|x) (:mod:`pvae.model.parts`) and,
    with ``upper``, two stochastic layers (docs/training.rst); the latent sites are scaled by
    :attr:`kl_weight` (loss E_q[-log p(x|z)] + β·KL), its parameters ``pyro.param`` s for SVI.
    With labels (``config.supervision``, docs/labels.rst) p(x|z,y) and q(z|x,y) read [·, one-hot
    y]; the semi-supervised model adds y ~ p(y) and the ``classifier`` q(y|x)."""

    def __init__(self, prior: nn.Module, likelihood: nn.Module, guide: nn.Module,
                 x_dim: int | None = None, num_data: int | None = None, beta: float = 1.0,
                 config: VAEConfig | None = None, upper: nn.Module | None = None,
                 classifier: nn.Module | None = None):
        super().__init__()
        for part, protocol in ((prior, Prior), (likelihood, Likelihood), (guide, Guide)):
            if not isinstance(part, protocol):
                raise ConfigError(f"{type(part).__name__} lacks the attributes of a "
                                  f"pvae.model.parts.{protocol.__name__}; see its docstring")
        if upper is not None and (guide.uses_model or int(prior.z_dim) != int(upper.top_z_dim)):
            raise ConfigError(f"two stochastic layers need a prior p(z2) of the upper layer's "
                              f"size {upper.top_z_dim} (got {prior.z_dim}) and a guide that does "
                              "not run the model")
        self.z_dim = int(prior.z_dim if upper is None else upper.z_dim)
        if config is None:
            config = VAEConfig(prior=None, guide=None, likelihood=None, z_dim=self.z_dim,
                               x_dim=x_dim, num_data=num_data, beta=beta)
        if (classifier is not None) != (config.supervision == "semi"):
            raise ConfigError("a classifier q(y|x) belongs to the semi-supervised model only: "
                              "pass one exactly when config.supervision is 'semi'")
        self.prior, self.likelihood, self.q, self.upper = prior, likelihood, guide, upper
        self.classifier = classifier
        self._direct, self._warmup = 0, 1.0
        object.__setattr__(self, "config", config)
        if guide.uses_model:
            self.q.bind(self.prior, self.likelihood)

    @classmethod
    def from_config(cls, config: VAEConfig) -> "VAE":
        """A new VAE (fresh weights from the global torch RNG) built from ``config``."""
        return cls(*config.build(), config=config, upper=config.build_upper(),
                   classifier=config.build_classifier())

    @property
    def x_dim(self) -> int:
        """Values per example."""
        return self.config.x_dim

    @property
    def num_data(self) -> int | None:
        """The dataset size of a guide with per-example parameters (the plate's size)."""
        return self.config.num_data

    @num_data.setter
    def num_data(self, value: int | None) -> None:
        object.__setattr__(self, "config", self.config.replace(num_data=value))

    @property
    def beta(self) -> float:
        """β, the weight of the KL term, read from :attr:`config` (its one home)."""
        return self.config.beta

    @beta.setter
    def beta(self, value: float) -> None:
        object.__setattr__(self, "config", self.config.replace(beta=check_beta(value)))

    @property
    def kl_weight(self) -> float:
        """The scale on the latent sites now: β times the warm-up fraction (1 outside warm-up)."""
        return self.beta * self._warmup

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
    def supervision(self) -> str:
        """How the model uses labels: ``"none"``, ``"conditional"`` or ``"semi"``."""
        return self.config.supervision

    @property
    def num_classes(self) -> int:
        """K, the classes of the label y; 0 for a model without labels."""
        return self.config.label_classes()

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
        """Within this context ``model`` and ``guide`` issue no ``pyro.param`` statements."""
        self._direct += 1
        try:
            yield self
        finally:
            self._direct -= 1

    def _param_statements(self, *parts: str) -> None:
        """``pyro.param`` each trainable parameter of ``parts``, replacing an earlier VAE's."""
        store = pyro.get_param_store()
        for part in (part for part in parts if getattr(self, part) is not None):
            for name, p in getattr(self, part).named_parameters(prefix=part):
                if p.requires_grad:
                    if name in store and store[name].unconstrained() is not p:
                        del store[name]
                    pyro.param(name, p)

    def _plate(self, x: torch.Tensor, idx: torch.Tensor | None):
        """The ``"data"`` plate: of size N subsampled at the dataset indices ``idx`` if given."""
        if idx is None:
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", self.num_data or x.shape[0], subsample=idx)

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None,
              y: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p(z) (two layers: z2 ~ p(z2), z ~ p(z|z2)), x ~ p(x|z) in the plate; returns z.
        Conditional: x ~ p(x|z,y), y given; semi: y ~ p(y) = 1/K as well, observed if given."""
        if not self._direct:
            self._param_statements("prior", "likelihood", "upper")
        pz = self.prior()
        with self._plate(x, idx):
            return self._model_program(pz, x, self._pyro_sample, y)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None,
              y: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ q(z|x) (two layers: then z2 ~ q(z2|z)) in the ``"data"`` plate; returns z. With
        labels z ~ q(z|x,y); semi without y: first y ~ q(y|x), enumerated in parallel."""
        if not self._direct:
            self._param_statements("q", "upper", "classifier")
        with self._plate(x, idx):
            return self._guide_program(x, idx, self._pyro_sample, y)

    def _model_program(self, pz, x: torch.Tensor, sample, y: torch.Tensor | None = None
                       ) -> torch.Tensor:
        if self.upper is not None:
            pz = self.upper.conditional(sample(TOP_SITE, pz))
        z = code = sample("z", pz)
        if self.num_classes:  # labelled models run through Pyro only (not plain_program)
            if self.supervision == "semi":
                y = pyro.sample(LABEL_SITE, dist.Categorical(logits=x.new_zeros(
                    self.num_classes)), obs=y)
            code = join_label(z, self._given(y), self.num_classes)
        sample("x", self.likelihood(code), x)
        return z

    def _guide_program(self, x: torch.Tensor, idx: torch.Tensor | None, sample,
                       y: torch.Tensor | None = None) -> torch.Tensor:
        inputs = x
        if self.num_classes:
            if y is None and self.classifier is not None:
                y = pyro.sample(LABEL_SITE, self.classifier(x), infer={"enumerate": "parallel"})
            inputs = join_label(x, self._given(y), self.num_classes)
        z = sample("z", self.q(inputs, idx))
        if self.upper is not None:
            sample(TOP_SITE, self.upper.posterior(z))
        return z

    def _pyro_sample(self, name: str, fn, obs: torch.Tensor | None = None) -> torch.Tensor:
        """``pyro.sample``, a latent site scaled by :attr:`kl_weight` (the β handler)."""
        if obs is not None:
            return pyro.sample(name, fn, obs=obs)
        with beta_handler(self.kl_weight):
            return pyro.sample(name, fn)

    @property
    def plain_program(self) -> bool:
        """Whether :meth:`plain_sites` lists what :meth:`model` and :meth:`guide` trace: they
        are :class:`VAE`'s own, neither replaced on this instance nor overridden, with no label."""
        return not self.num_classes and all(
            getattr(type(self), name) is getattr(VAE, name) and name not in self.__dict__
            for name in ("model", "guide", "_model_program", "_guide_program"))

    def plain_sites(self, x: torch.Tensor, idx: torch.Tensor | None = None, *,
                    latent_scale: torch.Tensor | float, particles: int | None = None,
                    values: dict | None = None) -> tuple[list[Site], list[Site]]:
        """The (guide, model) :class:`~pvae.infer.sites.Site` s of :meth:`guide` and
        :meth:`model` without Pyro: z ~ q(z|x) by ``rsample`` (K = ``particles`` draws at dim
        −2) or ``values``; ``latent_scale`` is β_t·N/B (0: masked), N/B on ``"x"``."""
        data_scale = 1.0 if idx is None else (self.num_data or x.shape[0]) / idx.shape[0]
        guide = SiteRecorder(latent_scale, data_scale, particles, values)
        self._guide_program(x, idx, guide)
        drawn = {site.name: site.value for site in guide.sites}
        model = SiteRecorder(latent_scale, data_scale, particles, drawn)
        self._model_program(self.prior(), x, model)
        return guide.sites, model.sites

    def _given(self, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ConfigError("this VAE is conditional (supervision 'conditional'): it models "
                              "p(x|y) and needs the labels; pass y= (one class per example)")
        return y

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_y q(y|x) per example (the semi-supervised model's classifier)."""
        if self.classifier is None:
            raise ConfigError("only the semi-supervised model (supervision 'semi') classifies")
        return self.classifier(x).logits.argmax(-1)

    def check_data(self, x: torch.Tensor, probabilities: bool = False,
                   y: torch.Tensor | None = None, unlabelled: bool = False) -> None:
        """:func:`~pvae.model.inputs.check_examples` of ``x``, and labels ``y`` checked by
        :func:`~pvae.model.labels.check_labels` (-1 too if ``unlabelled``)."""
        check_examples(x, self.x_dim, self.config.image_shape, self.likelihood, probabilities)
        if y is not None and not self.num_classes:
            raise ConfigError("this VAE has no labels (supervision 'none'): drop y, or build it "
                              "with supervision='conditional' or 'semi' and num_classes=K")
        if y is not None:
            check_labels(y, x.shape[0], self.num_classes, unlabelled)

    def guide_input(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """What q(z|·) reads: x, or with labels [x, one-hot y], y the classifier's argmax when
        the semi-supervised model is not given one."""
        if not self.num_classes:
            return x
        if y is None and self.classifier is not None:
            y = self.predict(x)
        return join_label(x, self._given(y), self.num_classes)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """``(loc, scale, flows)``: q(z|x) (with labels, q(z|x,y)) = f(N(loc, scale²)), ``flows``
        f shared by all x (else []), or another family's mean and standard deviation;
        ConfigError without an encoder."""
        if not self.amortized:
            raise ConfigError("this VAE's guide owns per-example parameters and has no encoder "
                              "for new data")
        x = self.guide_input(x, y)
        own = getattr(self.q, "encode", None)
        if own is not None:
            return (*own(x), [])
        q = self.q(x)
        if flows := shared_flows(q):
            base = q.base_dist.base_dist
            return base.loc, base.scale, flows
        try:
            return q.mean, q.stddev, []
        except NotImplementedError:
            z = q.sample((256,))
            return z.mean(0), z.std(0), []

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, idx: torch.Tensor | None = None,
                    y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z] (with labels, E[x|z,y]) at one sample z ~ q(z|x) (q(z|x,y)): the image a
        reconstruction figure shows; the semi-supervised model uses y = argmax q(y|x)."""
        if self.num_classes and y is None and self.classifier is not None:
            y = self.predict(x)
        z = self.q(self.guide_input(x, y), idx).sample()
        return self.likelihood.mean(join_label(z, y, self.num_classes) if self.num_classes
                                    else z)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z] for ``n`` draws z ~ p(z) (two layers: z2 ~ p(z2), z ~ p(z|z2)); with labels
        E[x|z,y] for the classes ``y`` (default: y ~ 1/K)."""
        z = self.prior().sample((n,))
        z = z if self.upper is None else self.upper.conditional(z).sample()
        if not self.num_classes:
            return self.likelihood.mean(z)
        if y is None:
            y = torch.randint(self.num_classes, (n,), device=z.device)
        return self.likelihood.mean(join_label(z, y, self.num_classes))


def build_vae(prior: str = "standard", guide: str = "mlp", likelihood: str = "bernoulli",
              z_dim: int = 50, hidden_dims: Sequence[int] = (200, 200), x_dim: int = 784,
              activation: str = "tanh", num_data: int | None = None, beta: float = 1.0,
              image_shape: Sequence[int] | None = None, stochastic_layers: int = 1,
              top_z_dim: int = 50, top_hidden_dims: Sequence[int] = (100, 100),
              supervision: str = "none", num_classes: int | None = None, alpha: float = 50.0,
              **options: Any) -> VAE:
    """A new :class:`VAE` whose ``config`` holds these arguments, ``options`` for the parts."""
    return VAE.from_config(VAEConfig(**locals()))  # the arguments are VAEConfig's fields
