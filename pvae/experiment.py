"""One experiment from configuration to results: data → VAE → fit → evaluate → figures.

:func:`run` is what ``examples/mnist_svi.py`` and ``pvae train`` call. It writes into
``config.out``: ``checkpoint.pt`` (after every epoch), ``metrics.json`` and the figures.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch

from .errors import ConfigError
from .files import atomic_write, check_writable, run_lock
from .likelihoods import LIKELIHOODS
from .vae import VAEConfig

log = logging.getLogger(__name__)
NO_TEST_EVALUATION = ("pvae does not yet evaluate a model trained with per-example guide "
                      "parameters on new images (each test image would need its own local fit "
                      "against the model); train with an amortized guide (--guide mlp, iaf, ...) "
                      "for test numbers")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of a run; the field names are the CLI flags with ``_`` for ``-``.

    ``options`` carries part-specific settings (e.g. ``num_components`` of the MoG prior)
    to the parts that declare them (:func:`pvae.vae.build_vae`). ``overwrite`` replaces a
    finished run in ``out``; without it (or ``resume``) a folder holding a run is refused.
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
    overwrite: bool = False
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
        self.vae_config(None)
        if not str(self.out).strip():
            raise ConfigError("--out is empty; name the folder for the run's files, e.g. --out runs/a")
        checks = [("--epochs", self.epochs >= 1, "at least 1"),
                  ("--batch-size", self.batch_size >= 1, "at least 1"),
                  ("--lr", math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
                  ("--eval-samples", self.eval_samples >= 1, "at least 1"),
                  ("--num-particles", self.num_particles >= 1, "at least 1"),
                  ("--beta", self.beta >= 0 and math.isfinite(self.beta), "a finite number >= 0"),
                  ("--beta-warmup-epochs", 0 <= self.beta_warmup_epochs <= self.epochs,
                   f"between 0 and --epochs ({self.epochs})"),
                  ("--seed", 0 <= self.seed <= 2**32 - 1, "in [0, 4294967295]"),
                  ("--chunk-size", self.chunk_size is None or self.chunk_size >= 1, "at least 1")]
        for flag, ok, what in checks:
            if not ok:
                raise ConfigError(f"{flag} must be {what}, got {getattr(self, flag[2:].replace('-', '_'))}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: continue the run or "
                              "replace it")
        return self

    def vae_config(self, num_data: int | None) -> VAEConfig:
        """The architecture these flags describe (784-pixel MNIST images)."""
        return VAEConfig(prior=self.prior, guide=self.guide, likelihood=self.likelihood,
                         z_dim=self.z_dim, hidden_dims=self.hidden_dims, x_dim=784,
                         activation=self.activation, num_data=num_data, options=self.options)

    def to_dict(self) -> dict:
        """Every flag's value, JSON-ready (``metrics.json``'s ``config``)."""
        d = dataclasses.asdict(self)
        d.update(hidden_dims=list(self.hidden_dims), options=dict(self.options))
        return d


def versions() -> dict[str, str]:
    """Versions of Python, torch and Pyro, for metrics.json."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "pyro": pyro.__version__}


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as JSON atomically."""
    atomic_write(path, json.dumps(obj, indent=2, default=_jsonable).encode())


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot write {type(v).__name__} to JSON")


def run(config: ExperimentConfig) -> dict:
    """Train and evaluate one VAE on MNIST; return the metrics written to ``metrics.json``.

    The run folder is locked for the whole run (:func:`pvae.files.run_lock`); one that holds
    a finished run is refused unless ``config.resume`` or ``config.overwrite``.
    """
    from .data import load_mnist
    from .train import fit, resolve_device
    from .vae import VAE

    config.validate()
    device = resolve_device(config.device)
    with run_lock(config.out) as out:
        if (out / "metrics.json").exists() and not (config.resume or config.overwrite):
            raise ConfigError(f"{config.out} holds a finished run (metrics.json); resume it "
                              "(--resume), replace it (--overwrite), or choose another --out")
        binary = LIKELIHOODS[config.likelihood].data_kind == "binary"
        data = load_mnist(config.data_dir, binarize=binary, train_subset=config.train_subset,
                          test_subset=config.test_subset)
        n_train = data.train_x.shape[0]
        vae_config = config.vae_config(n_train if config.guide == "local" else None)
        pyro.set_rng_seed(config.seed)
        vae = VAE.from_config(vae_config, beta=config.beta)
        result = fit(vae, data.train_x, epochs=config.epochs, batch_size=config.batch_size,
                     lr=config.lr, loss=config.loss, num_particles=config.num_particles,
                     beta_warmup_epochs=config.beta_warmup_epochs, binarize=binary,
                     test_x=data.test_x, out_dir=out, resume=config.resume,
                     overwrite=config.overwrite, device=str(device), seed=config.seed,
                     progress=config.progress)
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
                       config=config.to_dict(), vae=vae.config.to_dict(), beta=vae.beta,
                       versions=versions(), device=str(device))
        draw_figures(vae, test_x, data.test_y, result.history, out)
        write_json(out / "metrics.json", metrics)
    return metrics


def _evaluate(vae, test_x: torch.Tensor, config: ExperimentConfig, out: Path) -> dict:
    from .evaluate import EvalResult, evaluate
    from .plotting import plot_evaluation

    if not vae.amortized:
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
    if vae.amortized:
        n = min(2000, test_x.shape[0])
        plot_reconstructions(test_x[:16], vae.reconstruct(test_x[:16]), out / "reconstructions.png")
        z, _ = encoder_moments(vae, test_x[:n])
        plot_latent(z, test_y[:n], out / "latent.png")
    if history:
        plot_elbo_curves(history, out / "elbo_curves.png")


def plot_checkpoint(path: str | Path, out: str | Path | None = None,
                    data_dir: str = "data", test_subset: int | None = 2000,
                    device: str = "auto") -> Path:
    """Redraw a trained run's figures from its checkpoint into ``out`` (default: its folder):
    reconstructions, samples, the latent embedding and the ELBO curves (``evaluation.png``
    comes from ``pvae evaluate``)."""
    from . import checkpoint
    from .data import load_mnist
    from .train import resolve_device

    dev = resolve_device(device)
    ckpt = checkpoint.read(path)
    vae = checkpoint.load(path, device=dev)
    out = check_writable(out or Path(path).parent)
    if not vae.amortized:
        raise ConfigError("this checkpoint's guide has no encoder for test images, so there are "
                          f"no reconstructions or latent embedding to draw; {NO_TEST_EVALUATION}")
    data = load_mnist(data_dir, binarize=vae.likelihood.data_kind == "binary", train_subset=1,
                      test_subset=test_subset)
    history = ckpt.state.history if ckpt.state is not None else ()
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
