"""One experiment from configuration to results: data → VAE → fit → evaluate → figures.

:func:`run` is what ``examples/mnist_svi.py`` and ``pvae train`` call. It writes into
``config.out``: ``checkpoint.pt`` (after every epoch), ``metrics.json`` and the figures.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch

from . import checkpoint as ckpt
from .errors import ConfigError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .priors import PRIORS

log = logging.getLogger(__name__)
NO_TEST_EVALUATION = ("pvae does not yet evaluate a model trained with per-example guide "
                      "parameters on new images (each test image would need its own local fit "
                      "against the model); train with an amortized guide (--guide mlp, iaf, ...) "
                      "for test numbers")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of a run; the field names are the CLI flags with ``_`` for ``-``.

    ``options`` carries part-specific settings (e.g. ``num_components`` of the MoG prior)
    to the constructors of the prior, guide and likelihood.
    """

    data_dir: str = "data"
    out: str = "runs/mnist"
    epochs: int = 40
    batch_size: int = 100
    lr: float = 1e-3
    z_dim: int = 50
    hidden_dims: tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    seed: int = 0
    device: str = "auto"
    train_subset: int | None = None
    test_subset: int | None = None
    eval_samples: int = 1000
    chunk_size: int | None = None
    resume: bool = False
    prior: str = "standard"
    guide: str = "mlp"
    likelihood: str = "bernoulli"
    loss: str = "elbo"
    num_particles: int = 1
    beta: float = 1.0
    beta_warmup_epochs: float = 0.0
    progress: bool = True
    options: dict = field(default_factory=dict)

    def validate(self) -> "ExperimentConfig":
        """Raise ConfigError for a nonsensical setting, naming the flag and what it accepts."""
        for flag, name, registry in (("--prior", self.prior, PRIORS), ("--guide", self.guide, GUIDES),
                                     ("--likelihood", self.likelihood, LIKELIHOODS)):
            if name not in registry:
                raise ConfigError(f"unknown {flag} {name!r}; choose one of: "
                                  f"{', '.join(sorted(registry))}")
        checks = [("--epochs", self.epochs >= 1, "at least 1"),
                  ("--batch-size", self.batch_size >= 1, "at least 1"),
                  ("--lr", self.lr > 0, "positive"),
                  ("--z-dim", self.z_dim >= 1, "at least 1"),
                  ("--hidden-dims", len(self.hidden_dims) > 0 and min(self.hidden_dims) >= 1,
                   "one or more positive widths"),
                  ("--eval-samples", self.eval_samples >= 1, "at least 1"),
                  ("--num-particles", self.num_particles >= 1, "at least 1"),
                  ("--beta", self.beta >= 0 and self.beta != float("inf"), "a finite number >= 0"),
                  ("--beta-warmup-epochs", self.beta_warmup_epochs >= 0, ">= 0"),
                  ("--chunk-size", self.chunk_size is None or self.chunk_size >= 1, "at least 1")]
        for flag, ok, what in checks:
            if not ok:
                raise ConfigError(f"{flag} must be {what}, got {getattr(self, flag[2:].replace('-', '_'))}")
        return self

    def model_config(self, num_data: int | None) -> dict:
        """The configuration stored in checkpoints (model keys plus every flag)."""
        d = dataclasses.asdict(self)
        d.update(hidden_dims=list(self.hidden_dims), x_dim=784, num_data=num_data,
                 options=dict(self.options))
        return d


def versions() -> dict[str, str]:
    """Versions of Python, torch and Pyro, for metrics.json."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "pyro": pyro.__version__}


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as JSON atomically."""
    text = json.dumps(obj, indent=2, default=_jsonable).encode()
    ckpt.atomic_write(path, lambda f: f.write(text))


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot write {type(v).__name__} to JSON")


def run(config: ExperimentConfig) -> dict:
    """Train and evaluate one VAE on MNIST; return the metrics written to ``metrics.json``."""
    from .data import load_mnist
    from .train import fit, resolve_device
    from .vae import build_vae

    config.validate()
    out = ckpt.check_writable(config.out)
    device = resolve_device(config.device)
    binary = LIKELIHOODS[config.likelihood].data_kind == "binary"
    data = load_mnist(config.data_dir, binarize=binary, train_subset=config.train_subset,
                      test_subset=config.test_subset)
    n_train = data.train_x.shape[0]
    num_data = n_train if getattr(GUIDES[config.guide], "needs_index", False) else None
    stored = config.model_config(num_data)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    vae = build_vae(prior=config.prior, guide=config.guide, likelihood=config.likelihood,
                    z_dim=config.z_dim, hidden_dims=config.hidden_dims, x_dim=784,
                    activation=config.activation, num_data=num_data, **config.options)
    result = fit(vae, data.train_x, epochs=config.epochs, batch_size=config.batch_size,
                 lr=config.lr, loss=config.loss, num_particles=config.num_particles,
                 beta=config.beta, beta_warmup_epochs=config.beta_warmup_epochs,
                 binarize=binary, test_x=data.test_x, out_dir=out, resume=config.resume,
                 device=str(device), seed=config.seed, progress=config.progress, config=stored)
    test_x = data.test_x.to(device)
    metrics = {
        "epochs": result.epochs,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "train_elbo": result.history[-1].train_elbo if result.history else None,
        "history": [dataclasses.asdict(r) for r in result.history],
    }
    metrics.update(_evaluate(vae, test_x, config, out))
    metrics.update(n_train=n_train, likelihood_kind="discrete (binary pixels)" if binary else
                   "density (continuous pixels): not comparable with binary log p(x)",
                   config=stored, versions=versions(), device=str(device))
    draw_figures(vae, test_x, data.test_y, result.history, out)
    write_json(out / "metrics.json", metrics)
    return metrics


def _evaluate(vae, test_x: torch.Tensor, config: ExperimentConfig, out: Path) -> dict:
    from .evaluate import EvalResult, evaluate
    from .plotting import plot_evaluation

    if vae.needs_index:
        log.warning("--guide %s owns parameters for the training images only and has no "
                    "encoder for test images, so metrics.json has no test numbers: %s",
                    config.guide, NO_TEST_EVALUATION)
        return EvalResult.missing_metrics()
    result = evaluate(vae.model, vae.guide, test_x, num_samples=config.eval_samples,
                      chunk_size=config.chunk_size, progress=config.progress)
    plot_evaluation(result, out / "evaluation.png")
    np.save(out / "test_log_px.npy", np.asarray(result.log_px))
    return result.to_metrics()


@torch.no_grad()
def draw_figures(vae, test_x: torch.Tensor, test_y: torch.Tensor, history, out: Path) -> None:
    """Reconstructions, prior samples, the 2-D latent embedding and the ELBO curves.

    A guide without an encoder (per-example parameters) gets no reconstructions and no
    latent embedding of test images.
    """
    from .amortization import encoder_moments
    from .plotting import plot_elbo_curves, plot_latent, plot_reconstructions, plot_samples

    plot_samples(vae.sample(64), out / "samples.png")
    if not vae.needs_index:
        n = min(2000, test_x.shape[0])
        plot_reconstructions(test_x[:16], vae.reconstruct(test_x[:16]), out / "reconstructions.png")
        z, _ = encoder_moments(vae, test_x[:n])
        plot_latent(z, test_y[:n], out / "latent.png")
    if history:
        plot_elbo_curves(history, out / "elbo_curves.png")


def plot_checkpoint(checkpoint: str | Path, out: str | Path | None = None,
                    data_dir: str | None = None, test_subset: int | None = 2000,
                    device: str = "auto") -> Path:
    """Redraw a trained run's figures from its checkpoint into ``out`` (default: its folder)."""
    from .data import load_mnist
    from .train import EpochRecord, resolve_device

    dev = resolve_device(device)
    vae, config = ckpt.load_vae(checkpoint, device=dev)
    history = [EpochRecord(**r) for r in ckpt.load(checkpoint)["history"]]
    out = ckpt.check_writable(out or Path(checkpoint).parent)
    if vae.needs_index:
        raise ConfigError("this checkpoint's guide has no encoder for test images, so there are "
                          f"no reconstructions or latent embedding to draw; {NO_TEST_EVALUATION}")
    binary = LIKELIHOODS[config["likelihood"]].data_kind == "binary"
    data = load_mnist(data_dir or config["data_dir"], binarize=binary, train_subset=1,
                      test_subset=test_subset)
    draw_figures(vae, data.test_x.to(dev), data.test_y, history, out)
    return out


def format_summary(metrics: dict) -> str:
    """A short plain-text table of a run's main numbers."""
    rows = [("epochs / steps", f"{metrics['epochs']} / {metrics['steps']}"),
            ("train seconds", f"{metrics['train_seconds']:.1f}"),
            ("train ELBO", _fmt(metrics.get("train_elbo"))),
            ("test ELBO", _fmt(metrics.get("test_elbo"))),
            ("test log p(x)" + (f", K={metrics['eval_samples']}" if metrics.get("eval_samples") else ""),
             f"{_fmt(metrics.get('test_log_px'))} ± {_fmt(metrics.get('test_log_px_stderr'))}"),
            ("PSIS k-hat max", _fmt(metrics.get("psis_khat_max"))),
            ("test images", str(metrics.get("n_test") or "none"))]
    return format_rows(rows)


def format_rows(rows: list[tuple[str, str]]) -> str:
    """Label/value rows as an aligned plain-text table, in nats per image."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n(nats per image)"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"
