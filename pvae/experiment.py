"""One experiment from configuration to results: data → VAE → fit → evaluate → figures."""
from __future__ import annotations

import contextlib
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

from . import datasets, distributed
from .amortization import encoder_moments
from .errors import ConfigError
from .evaluate import EvalResult, ais, bdmc, evaluate
from .files import atomic_write, run_lock
from .likelihoods import LIKELIHOODS
from .plotting import (plot_ais, plot_elbo_curves, plot_evaluation, plot_latent,
                       plot_reconstructions, plot_samples)
from .recipes import check_overrides, get_recipe, warmup_epochs
from .state import train_cpu_seconds
from .train import fit, resolve_device
from .vae import VAE, VAEConfig

log = logging.getLogger(__name__)
PER_EXAMPLE_FILE = "test_log_px.npy"  # per-image log p(x); compare pairs runs on it
AIS_PER_EXAMPLE_FILE = "test_log_px_ais.npy"
METHODS = ("is", "ais", "bdmc")
AIS_STEPS, AIS_CHAINS, AIS_LEAPFROG, AIS_SUBSET = 500, 16, 10, 100
NO_TEST_EVALUATION = ("pvae does not yet evaluate a model trained with per-example guide "
                      "parameters on new images (each test image would need its own local fit "
                      "against the model); train with an amortized guide (--guide mlp, iaf, ...) "
                      "for test numbers")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of a run; the field names are the CLI flags with ``_`` for ``-``, and
    ``options`` carries part-specific settings (``num_components``, ...) to the parts."""

    data_dir: str = "data"
    dataset: str = "mnist"
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
    method: str = "is"
    ais_steps: int = AIS_STEPS
    ais_chains: int = AIS_CHAINS
    ais_leapfrog: int = AIS_LEAPFROG
    ais_subset: int = AIS_SUBSET
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
                  ("--chunk-size", self.chunk_size is None or self.chunk_size >= 1, "at least 1"),
                  ("--method", self.method in METHODS, f"one of {', '.join(METHODS)}")]
        checks += [(f"--{name.replace('_', '-')}", getattr(self, name) >= 1, "at least 1")
                   for name in ("ais_steps", "ais_chains", "ais_leapfrog", "ais_subset")]
        for flag, ok, what in checks:
            if not ok:
                value = getattr(self, flag[2:].replace("-", "_"))
                raise ConfigError(f"{flag} must be {what}, got {value}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: continue the run or "
                              "replace it")
        return self

    def vae_config(self, num_data: int | None,
                   image_shape: tuple[int, ...] = datasets.MNIST_SHAPE) -> VAEConfig:
        """The architecture these flags describe for images of ``image_shape`` (H, W), or
        (D,) for flattened data of D values (default: 28×28 MNIST)."""
        return VAEConfig(prior=self.prior, guide=self.guide, likelihood=self.likelihood,
                         z_dim=self.z_dim, hidden_dims=self.hidden_dims,
                         x_dim=math.prod(image_shape), image_shape=tuple(image_shape),
                         dataset=self.dataset, activation=self.activation, num_data=num_data,
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
    """Train and evaluate one VAE on ``config.dataset``; write ``checkpoint.pt`` (every epoch),
    the figures and ``metrics.json`` into ``config.out`` (locked; refused if it holds a
    finished run, unless ``config.resume`` or ``config.overwrite``); return the metrics.
    ``pvae train`` runs this. Under torchrun (``WORLD_SIZE`` > 1) every rank runs it: the
    training is data-parallel (:func:`~pvae.train.fit`), the test set is split across the
    ranks (:func:`evaluate_sharded`) and rank 0 alone writes files."""
    config.validate()
    device = resolve_device(config.device)
    with distributed.process_group(device.type) as world, _run_folder(config.out) as out:
        device, main = distributed.local_device(device), distributed.is_main()
        binary = LIKELIHOODS[config.likelihood].data_kind == "binary"
        for turn in (0, 1):  # LOCAL_RANK 0 first: one rank per machine fetches missing files
            with distributed.together("checking the run folder and loading the data"):
                if turn == 0 and main and (out / "metrics.json").exists() and not (
                        config.resume or config.overwrite):
                    raise ConfigError(f"{config.out} holds a finished run (metrics.json); resume "
                                      "it (--resume), replace it (--overwrite), or choose "
                                      "another --out")
                if (distributed.env_local_rank() == 0) == (turn == 0):
                    data = datasets.load_dataset(config.dataset, config.data_dir,
                                                 binarize=binary, train_subset=config.train_subset,
                                                 test_subset=config.test_subset)
        n_train = data.train_x.shape[0]
        vae_config = config.vae_config(n_train if config.guide == "local" else None,
                                       data.image_shape)
        pyro.set_rng_seed(config.seed)
        vae = VAE.from_config(vae_config, beta=config.beta)
        recipe = get_recipe(config.recipe)
        if recipe.pseudo_inputs == "data" and hasattr(vae.prior, "start_at"):
            vae.prior.start_at(data.train_x, torch.Generator().manual_seed(config.seed))
        state = fit(vae, data.train_x, epochs=config.epochs, batch_size=config.batch_size,
                    lr=recipe.lr or config.lr, loss=config.loss,
                    num_particles=config.num_particles, adam_eps=recipe.adam_eps,
                    lr_schedule=recipe.lr_schedule, schedule_epochs=config.epochs,
                    beta_warmup_epochs=warmup_epochs(recipe, config.epochs,
                                                     config.beta_warmup_epochs), binarize=binary,
                    test_x=data.test_x, out_dir=out, resume=config.resume,
                    overwrite=config.overwrite, device=str(device), seed=config.seed,
                    progress=config.progress)
        test_x = data.test_x.to(device)
        metrics = {"epochs": state.epoch, "steps": state.step, "train_seconds": state.train_seconds,
                   "train_cpu_seconds": train_cpu_seconds(state.history),
                   "train_elbo": state.history[-1].train_elbo if state.history else None,
                   "history": [dataclasses.asdict(r) for r in state.history]}
        if vae.amortized:
            evaluation = evaluate_sharded(vae, test_x, num_samples=config.eval_samples,
                                          chunk_size=config.chunk_size,
                                          progress=config.progress and main)
            if main:
                plot_evaluation(evaluation, out / "evaluation.png")
                np.save(out / PER_EXAMPLE_FILE, np.asarray(evaluation.log_px))
            metrics.update(evaluation.to_metrics())
            metrics.update(annealed(vae, test_x[:config.ais_subset], config, out, main))
        else:
            log.warning("--guide %s owns parameters for the training images only and has no "
                        "encoder for test images, so metrics.json has no test numbers: %s",
                        config.guide, NO_TEST_EVALUATION)
            metrics.update(EvalResult.missing_metrics())
        metrics.update(n_train=n_train, likelihood_kind="discrete (binary pixels)" if binary else
                       "density (continuous pixels): not comparable with binary log p(x)",
                       config=config.to_dict(), vae=vae.config.to_dict(), beta=vae.beta,
                       versions=versions(), device=str(device), world_size=world)
        if main:
            draw_figures(vae, test_x, data.test_y, state.history, out)
            write_json(out / "metrics.json", metrics)
        distributed.barrier()
    return metrics


def _run_folder(out: str | Path):
    """The run folder: locked by :func:`~pvae.files.run_lock` on rank 0; on the other ranks,
    which write nothing, its path."""
    return run_lock(out) if distributed.is_main() else contextlib.nullcontext(Path(out))


def gathered(result):
    """A per-example result (:class:`~pvae.evaluate.EvalResult`, :class:`~pvae.ais.AISResult`,
    :class:`~pvae.ais.BDMCResult`) of this rank's :func:`~pvae.distributed.shard` with every
    per-example array gathered, in the order of the examples, on every rank (for one
    process: ``result`` itself)."""
    if distributed.world_size() == 1:
        return result
    changes = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, (torch.Tensor, np.ndarray)):
            changes[f.name] = distributed.gather(value)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = gathered(value)
    return dataclasses.replace(result, **changes)


def evaluate_sharded(vae: VAE, x: torch.Tensor, **kwargs) -> EvalResult:
    """:func:`pvae.evaluate.evaluate` of ``vae`` on ``x``, each rank scoring its
    :func:`~pvae.distributed.shard` with its own draws, the results :func:`gathered`."""
    return gathered(evaluate(vae.model, vae.guide, distributed.shard(x), **kwargs))


def ais_budget(flags, progress: bool) -> dict:
    """The keyword arguments of :func:`pvae.evaluate.ais` and ``bdmc`` from the flags
    ``ais_steps``, ``ais_chains``, ``ais_leapfrog`` and ``chunk_size`` of ``flags`` (an
    :class:`ExperimentConfig` or the parsed ``pvae evaluate`` arguments)."""
    return dict(num_steps=flags.ais_steps, num_chains=flags.ais_chains,
                num_leapfrog=flags.ais_leapfrog, chunk_size=flags.chunk_size, progress=progress)


def annealed(vae, x: torch.Tensor, config: ExperimentConfig, out: Path, main: bool) -> dict:
    """``--method ais``: AIS on ``x`` (``test_log_px_ais``, ...); ``bdmc``: also BDMC on as many
    simulated images; ``is``: nothing. Sharded across ranks like :func:`evaluate_sharded`;
    the figures are written on rank 0 (``main``). Returns the metrics entries."""
    if config.method == "is":
        return {}
    budget = ais_budget(config, config.progress and main)
    result = gathered(ais(vae.model, vae.guide, distributed.shard(x), **budget))
    metrics = result.to_metrics()
    if config.method == "bdmc":
        sandwich = gathered(bdmc(vae.model, vae.guide, distributed.shard(x), **budget))
        metrics.update(sandwich.to_metrics())
    if main:
        np.save(out / AIS_PER_EXAMPLE_FILE, result.log_px.numpy())
        plot_ais(result, out / "ais.png")
        if config.method == "bdmc":
            plot_ais(sandwich, out / "bdmc.png")
    return metrics


@torch.no_grad()
def draw_figures(vae, test_x: torch.Tensor, test_y: torch.Tensor, history,
                 out: Path) -> list[Path]:
    """Prior samples, the ELBO curves of ``history`` (if any) and, with an encoder, the
    reconstructions and latent embedding of ``test_x`` (at most 2000 images); the files."""
    shape = vae.config.image_shape if vae.config is not None else None
    written = [plot_samples(vae.sample(64), out / "samples.png", image_shape=shape)]
    if vae.amortized:
        n = min(2000, test_x.shape[0])
        written.append(plot_reconstructions(test_x[:16], vae.reconstruct(test_x[:16]),
                                            out / "reconstructions.png", image_shape=shape))
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


def ais_rows(metrics: dict) -> list[tuple[str, str]]:
    """The summary rows of AIS (``test_log_px_ais``, ...) and BDMC (``bdmc_*``) entries."""
    rows = []
    if metrics.get("test_log_px_ais") is not None:
        budget = f"T={metrics['ais_steps']}, C={metrics['ais_chains']}"
        rows += [("test images (AIS)", str(metrics["ais_n_test"])),
                 *estimate_rows(metrics, [(f"test log p(x), AIS {budget}", "test_log_px_ais")]),
                 ("HMC acceptance", format_number(metrics["ais_accept_rate"])),
                 ("AIS seconds", f"{metrics['ais_seconds']:.0f}")]
    if metrics.get("bdmc_lower") is not None:
        rows += [("simulated images (BDMC)", str(metrics["bdmc_n"])),
                 *estimate_rows(metrics, [("BDMC lower bound", "bdmc_lower"),
                                          ("BDMC upper bound", "bdmc_upper"),
                                          ("BDMC gap", "bdmc_gap")])]
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
