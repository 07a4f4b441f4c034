"""The VAE as a Pyro program, the only module that samples ``"z"``, ``"z2"`` and ``"x"``: it carries
its :class:`~pvae.model.config.VAEConfig` and is the :class:`pvae.infer.host.Host` of inference."""
import contextlib
import math
from typing import Any, Sequence

import pyro
import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from torch import nn

from ..distributions import shared_flows
from ..errors import ConfigError, DataError
from ..infer.sites import Site, SiteRecorder
from .config import VAEConfig, check_beta
from .hierarchy import TOP_SITE
from .parts import Guide, Likelihood, Prior


def beta_handler(beta: float):
    """The handler that multiplies a site's log-density by β (at β = 0 ``poutine.mask``)."""
    beta = check_beta(beta)
    if beta == 1.0:
        return contextlib.nullcontext()
    if beta == 0.0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=beta)


class VAE(PyroModule):
    """A VAE with prior p(z), likelihood p(x|z) and guide q(z|x) (:mod:`pvae.model.parts`) and,
    with ``upper``, two stochastic layers (docs/training.rst); the latent sites are scaled by
    :attr:`kl_weight` (loss E_q[-log p(x|z)] + β·KL), its parameters ``pyro.param`` s for SVI."""

    def __init__(self, prior: nn.Module, likelihood: nn.Module, guide: nn.Module,
                 x_dim: int | None = None, num_data: int | None = None, beta: float = 1.0,
                 config: VAEConfig | None = None, upper: nn.Module | None = None):
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
        self.prior, self.likelihood, self.q, self.upper = prior, likelihood, guide, upper
        self._direct, self._warmup = 0, 1.0
        object.__setattr__(self, "config", config)
        if guide.uses_model:
            self.q.bind(self.prior, self.likelihood)

    @classmethod
    def from_config(cls, config: VAEConfig) -> "VAE":
        """A new VAE (fresh weights from the global torch RNG) built from ``config``."""
        return cls(*config.build(), config=config, upper=config.build_upper())

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

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ p(z) (two layers: z2 ~ p(z2), z ~ p(z|z2)), x ~ p(x|z) in the plate; returns z."""
        if not self._direct:
            self._param_statements("prior", "likelihood", "upper")
        pz = self.prior()
        with self._plate(x, idx):
            return self._model_program(pz, x, self._pyro_sample)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """z ~ q(z|x) (two layers: then z2 ~ q(z2|z)) in the ``"data"`` plate; returns z."""
        if not self._direct:
            self._param_statements("q", "upper")
        with self._plate(x, idx):
            return self._guide_program(x, idx, self._pyro_sample)

    def _model_program(self, pz, x: torch.Tensor, sample) -> torch.Tensor:
        if self.upper is not None:
            pz = self.upper.conditional(sample(TOP_SITE, pz))
        z = sample("z", pz)
        sample("x", self.likelihood(z), x)
        return z

    def _guide_program(self, x: torch.Tensor, idx: torch.Tensor | None, sample) -> torch.Tensor:
        z = sample("z", self.q(x, idx))
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
        are :class:`VAE`'s own, neither replaced on this instance nor overridden."""
        return all(getattr(type(self), name) is getattr(VAE, name) and name not in self.__dict__
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

    def check_data(self, x: torch.Tensor, probabilities: bool = False) -> None:
        """DataError unless ``x`` is a finite ``(B, x_dim)`` tensor in the likelihood's support,
        or with ``probabilities`` (training data to binarize) one of values in [0, 1]."""
        if not isinstance(x, torch.Tensor):
            raise DataError(f"data must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            shape = self.config.image_shape
            values = math.prod(x.shape[1:]) if x.dim() > 1 else 0
            built = (f"{'×'.join(map(str, shape))} images ({self.x_dim} values)" if shape
                     else f"{self.x_dim} values per example")
            fix = ("flatten each image with x.reshape(len(x), -1)" if values == self.x_dim else
                   f"the model was built for {built} and these data have {values} values per "
                   "example: give data of the model's size, or a model built for these")
            raise DataError(f"data must have shape (batch, {self.x_dim}) (flattened examples), "
                            f"got {tuple(x.shape)}; {fix}")
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
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """``(loc, scale, flows)``: q(z|x) = f(N(loc, scale²)), ``flows`` f shared by all x (else
        []), or another family's mean and standard deviation; ConfigError without an encoder."""
        if not self.amortized:
            raise ConfigError("this VAE's guide owns per-example parameters and has no encoder "
                              "for new data")
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
              image_shape: Sequence[int] | None = None, stochastic_layers: int = 1,
              top_z_dim: int = 50, top_hidden_dims: Sequence[int] = (100, 100),
              **options: Any) -> VAE:
    """A new :class:`VAE` whose ``config`` holds these arguments, ``options`` for the parts."""
    return VAE.from_config(VAEConfig(**locals()))  # the arguments are VAEConfig's fields
