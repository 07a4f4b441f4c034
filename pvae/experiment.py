"""One experiment from configuration to results: data → VAE → fit → evaluate → figures."""
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

from . import data
from .amortization import encoder_moments
from .errors import ConfigError
from .evaluate import EvalResult, evaluate
from .files import atomic_write, run_lock
from .likelihoods import LIKELIHOODS
from .plotting import (plot_elbo_curves, plot_evaluation, plot_latent, plot_reconstructions,
                       plot_samples)
from .recipes import check_overrides, get_recipe, warmup_epochs
from .train import fit, resolve_device
from .vae import VAE, VAEConfig

log = logging.getLogger(__name__)
PER_EXAMPLE_FILE = "test_log_px.npy"  # per-image log p(x); compare pairs runs on it
NO_TEST_EVALUATION = ("pvae does not yet evaluate a model trained with per-example guide "
                      "parameters on new images (each test image would need its own local fit "
                      "against the model); train with an amortized guide (--guide mlp, iaf, ...) "
                      "for test numbers")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of a run; the field names are the CLI flags with ``_`` for ``-``, and
    ``options`` carries part-specific settings (``num_components``, ...) to the parts."""

    data_dir: str = "data"
    out: str = "runs/mnist"
    epochs: int = 40
    batch_size: int = 100
    lr: float = 1e-3
    z_dim: int = 50
    hidden_dims: tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    stochastic_layers: int = 1
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
    recipe: str = "quick"
    progress: bool = True
    options: dict = field(default_factory=dict)

    def validate(self) -> "ExperimentConfig":
        """Raise ConfigError for a nonsensical setting, naming the flag and what it accepts."""
        self.vae_config(None)
        check_overrides(get_recipe(self.recipe), self.lr, self.beta_warmup_epochs,
                        ExperimentConfig.lr)
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
                value = getattr(self, flag[2:].replace("-", "_"))
                raise ConfigError(f"{flag} must be {what}, got {value}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: continue the run or "
                              "replace it")
        return self

    def vae_config(self, num_data: int | None) -> VAEConfig:
        """The architecture these flags describe (784-pixel MNIST images)."""
        return VAEConfig(prior=self.prior, guide=self.guide, likelihood=self.likelihood,
                         z_dim=self.z_dim, hidden_dims=self.hidden_dims, x_dim=784,
                         activation=self.activation, num_data=num_data,
                         stochastic_layers=self.stochastic_layers, options=self.options)

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
    """Write ``obj`` as JSON atomically (paths as strings)."""
    atomic_write(path, json.dumps(obj, indent=2, default=str).encode())


def run(config: ExperimentConfig) -> dict:
    """Train and evaluate one VAE on MNIST; write ``checkpoint.pt`` (every epoch), the figures
    and ``metrics.json`` into ``config.out`` (locked; refused if it holds a finished run, unless
    ``config.resume`` or ``config.overwrite``); return the metrics. ``pvae train`` runs this."""
    config.validate()
    device = resolve_device(config.device)
    with run_lock(config.out) as out:
        if (out / "metrics.json").exists() and not (config.resume or config.overwrite):
            raise ConfigError(f"{config.out} holds a finished run (metrics.json); resume it "
                              "(--resume), replace it (--overwrite), or choose another --out")
        binary = LIKELIHOODS[config.likelihood].data_kind == "binary"
        mnist = data.load_mnist(config.data_dir, binarize=binary,
                                train_subset=config.train_subset, test_subset=config.test_subset)
        n_train = mnist.train_x.shape[0]
        vae_config = config.vae_config(n_train if config.guide == "local" else None)
        pyro.set_rng_seed(config.seed)
        vae = VAE.from_config(vae_config, beta=config.beta)
        recipe = get_recipe(config.recipe)
        if recipe.pseudo_inputs == "data" and hasattr(vae.prior, "start_at"):
            vae.prior.start_at(mnist.train_x, torch.Generator().manual_seed(config.seed))
        state = fit(vae, mnist.train_x, epochs=config.epochs, batch_size=config.batch_size,
                    lr=recipe.lr or config.lr, loss=config.loss,
                    num_particles=config.num_particles, adam_eps=recipe.adam_eps,
                    lr_schedule=recipe.lr_schedule, schedule_epochs=config.epochs,
                    beta_warmup_epochs=warmup_epochs(recipe, config.epochs,
                                                     config.beta_warmup_epochs), binarize=binary,
                    test_x=mnist.test_x, out_dir=out, resume=config.resume,
                    overwrite=config.overwrite, device=str(device), seed=config.seed,
                    progress=config.progress)
        test_x = mnist.test_x.to(device)
        metrics = {"epochs": state.epoch, "steps": state.step, "train_seconds": state.train_seconds,
                   "train_elbo": state.history[-1].train_elbo if state.history else None,
                   "history": [dataclasses.asdict(r) for r in state.history]}
        if vae.amortized:
            evaluation = evaluate(vae.model, vae.guide, test_x, num_samples=config.eval_samples,
                                  chunk_size=config.chunk_size, progress=config.progress)
            plot_evaluation(evaluation, out / "evaluation.png")
            np.save(out / PER_EXAMPLE_FILE, np.asarray(evaluation.log_px))
            metrics.update(evaluation.to_metrics())
        else:
            log.warning("--guide %s owns parameters for the training images only and has no "
                        "encoder for test images, so metrics.json has no test numbers: %s",
                        config.guide, NO_TEST_EVALUATION)
            metrics.update(EvalResult.missing_metrics())
        metrics.update(n_train=n_train, likelihood_kind="discrete (binary pixels)" if binary else
                       "density (continuous pixels): not comparable with binary log p(x)",
                       config=config.to_dict(), vae=vae.config.to_dict(), beta=vae.beta,
                       versions=versions(), device=str(device))
        draw_figures(vae, test_x, mnist.test_y, state.history, out)
        write_json(out / "metrics.json", metrics)
    return metrics


@torch.no_grad()
def draw_figures(vae, test_x: torch.Tensor, test_y: torch.Tensor, history,
                 out: Path) -> list[Path]:
    """Prior samples, the ELBO curves of ``history`` (if any) and, with an encoder, the
    reconstructions and latent embedding of ``test_x`` (at most 2000 images); the files."""
    written = [plot_samples(vae.sample(64), out / "samples.png")]
    if vae.amortized:
        n = min(2000, test_x.shape[0])
        written.append(plot_reconstructions(test_x[:16], vae.reconstruct(test_x[:16]),
                                            out / "reconstructions.png"))
        z, _ = encoder_moments(vae, test_x[:n])
        written.append(plot_latent(z, test_y[:n], out / "latent.png"))
    if history:
        written.append(plot_elbo_curves(history, out / "elbo_curves.png"))
    return written


def test_rows(metrics: dict) -> list[tuple[str, str]]:
    """The test-set rows of a run's summary from its ``metrics.json`` entries."""
    k = metrics.get("eval_samples")
    rows = [("test images", str(metrics.get("n_test") or "none")),
            *estimate_rows(metrics, [("test ELBO", "test_elbo"),
                                     ("test log p(x)" + (f", K={k}" if k else ""), "test_log_px")])]
    khat = metrics.get("psis_khat_max")
    if khat is None and k:
        why = "K <= 20 is too few draws to fit a tail" if k <= 20 else "no tail could be fitted"
        return rows + [("PSIS k-hat", f"unknown: {why}")]
    rows.append(("PSIS k-hat max", format_number(khat)))
    if khat is not None:
        rows.append(("k-hat > 0.7", f"{100 * metrics['psis_khat_frac_bad']:.1f}% of images"))
    return rows


def estimate_rows(values: dict, labels: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A row ``(label, "values[key] ± values[key_stderr]")`` per ``(label, key)``."""
    return [(label, f"{format_number(values.get(key))} ± "
                    f"{format_number(values.get(key + '_stderr'))}") for label, key in labels]


def format_rows(rows: list[tuple[str, str]]) -> str:
    """Label/value rows as an aligned plain-text table, in nats per image."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n(nats per image)"


def format_number(v, digits: int = 2) -> str:
    """``v`` with ``digits`` decimals; ``n/a`` for None or a non-finite number."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"
