"""One run, configuration to results, in the public steps ``examples/mnist_svi.py`` spells
out: :func:`workspace`, :func:`load_data`, :func:`build_model`, ``fit``, :func:`evaluate_model`
and :func:`finish` (``metrics.json``, then the figures)."""
import contextlib
import dataclasses
from pathlib import Path
from typing import Iterator

import pyro
import torch

from ..data.dataset import Dataset
from ..files import claim, run_lock
from ..model.labels import conditional_samples
from ..model.likelihoods import LIKELIHOODS
from ..model.vae import VAE
from ..training import distributed
from ..training.loop import CHECKPOINT, fit, resolve_device
from ..training.state import TrainState, train_cpu_seconds
from .config import RunConfig
from .evaluation import draw, estimate, plan, versions, write, write_json
from .labels import (accuracy_metrics, check_labelled, evaluation_labels, given_y, label_record,
                     training_labels)
from .plotting import (plot_conditional_samples, plot_elbo_curves, plot_latent,
                       plot_reconstructions, plot_samples)
from .latents import ACTIVE_THRESHOLD, LatentReport, latent_report, traversals
from .useplots import plot_kl_per_dim, plot_traversals



@contextlib.contextmanager
def workspace(config: RunConfig) -> Iterator[tuple[Path, torch.device, int]]:
    """``(out, device, world size)``: the run folder (locked by rank 0, which alone writes),
    this rank's device, and the process group of a torchrun run (W = 1 without one)."""
    device = resolve_device(config.device)
    with distributed.process_group(device.type, Path(config.out) / CHECKPOINT) as world:
        folder = run_lock(config.out) if distributed.is_main() else \
            contextlib.nullcontext(Path(config.out))
        with folder as out:
            yield out, distributed.local_device(device), world
            distributed.barrier()


def load_data(config: RunConfig, out: Path) -> Dataset:
    """The run's data (LOCAL_RANK 0 first, to fetch), after the folder is claimed."""
    binary = LIKELIHOODS[config.model.likelihood].data_kind == "binary"
    for turn in (0, 1):
        with distributed.together("checking the run folder and loading the data"):
            if turn == 0 and distributed.is_main():
                claim(out, config.resume, config.overwrite)
            if (distributed.env_local_rank() == 0) == (turn == 0):
                data = config.data.load(binarize=binary)
    return data


def build_model(config: RunConfig, data: Dataset) -> tuple[RunConfig, VAE]:
    """The configuration with the model's sizes (and its labels' classes) read off the data,
    and a new VAE built from it (initial weights from the run's seed; a recipe may start the
    VampPrior at the data)."""
    check_labelled(config.model.supervision, data)
    config = config.replace(x_dim=data.train_x.shape[1], image_shape=data.image_shape,
                            num_data=data.train_x.shape[0] if config.model.guide == "local"
                            else None, num_classes=data.num_classes
                            if config.model.supervision != "none" else None)
    seed = config.train.seed
    if seed is not None:
        pyro.set_rng_seed(seed)
    vae = VAE.from_config(config.model)
    if config.train.recipe_values.pseudo_inputs == "data" and hasattr(vae.prior, "start_at"):
        vae.prior.start_at(data.train_x, torch.Generator().manual_seed(seed or 0))
    return config, vae


def evaluate_model(vae: VAE, test_x: torch.Tensor, config: RunConfig, out: Path,
                   progress: bool = False, test_y: torch.Tensor | None = None) -> dict:
    """The metrics of the estimators the method asks for, their files written by rank 0; with
    labels ``test_y``: log p(x|y) of the conditional model (keys ``*_given_y``), the
    classifier's accuracy for the semi-supervised one."""
    metrics, labels = {}, {} if test_y is None else evaluation_labels(vae, test_y)
    for name in plan(config.eval.method):
        n = None if name == "is" else config.eval.ais_subset
        result = estimate(name, vae, test_x[:n], config.eval, progress,
                          **{k: v[:n] for k, v in labels.items()})
        metrics.update(result.to_metrics())
        if distributed.is_main():
            write(name, result, out)
    if vae.supervision == "conditional":
        metrics = given_y(metrics)
    return {**metrics, **({} if test_y is None else accuracy_metrics(vae, test_x, test_y))}


def training_metrics(state: TrainState) -> dict:
    """The ``metrics.json`` entries of the training: epochs, steps, times, ELBO, history."""
    return {"epochs": state.epoch, "steps": state.step, "train_seconds": state.train_seconds,
            "train_cpu_seconds": train_cpu_seconds(state.history),
            "train_elbo": state.history[-1].train_elbo if state.history else None,
            "history": [dataclasses.asdict(r) for r in state.history]}


def finish(vae: VAE, data: Dataset, state: TrainState, metrics: dict, config: RunConfig,
           out: Path, world: int = 1) -> dict:
    """Complete the metrics (the latent space's KL per coordinate and active units, data sizes,
    the resolved configuration, versions, device) and, on rank 0, write ``metrics.json`` and then
    the figures; returns the metrics."""
    binary = vae.likelihood.data_kind == "binary"
    report = (latent_report(vae, data.test_x) if vae.amortized and vae.supervision == "none"
              else None)
    metrics = {**metrics, **(report.to_metrics() if report else dict.fromkeys(
        ("kl_per_dim", "active_units"))), "n_train": data.train_x.shape[0], "likelihood_kind": (
        "discrete (binary pixels)" if binary else
        "density (continuous pixels): not comparable with binary log p(x)"),
        "config": config.to_dict(), "versions": versions(), "device": str(vae.device),
        "world_size": world, **(label_record(data) if vae.supervision != "none" else {})}
    if distributed.is_main():
        write_json(out / "metrics.json", metrics)
        draw_figures(vae, data.test_x.to(vae.device), data.test_y, state.history, out,
                     label_name(config), report)
    return metrics


def run(config: RunConfig) -> dict:
    """Train and evaluate one VAE as ``config`` says, writing its checkpoint, ``metrics.json``
    and figures into ``config.out``; the metrics (``pvae train``; under torchrun, every rank)."""
    with workspace(config) as (out, device, world):
        data = load_data(config, out)
        config, vae = build_model(config, data)
        state = fit(vae, data.train_x, config.train, test_x=data.test_x, out_dir=out,
                    resume=config.resume, overwrite=config.overwrite, device=str(device),
                    progress=config.progress, record=config.to_dict(), **training_labels(vae, data))
        metrics = training_metrics(state)
        metrics.update(evaluate_model(vae, data.test_x.to(device), config, out,
                                      config.progress and distributed.is_main(),
                                      test_y=data.test_y.to(device)))
        return finish(vae, data, state, metrics, config, out, world)


def label_name(config: RunConfig) -> str:
    """What the data's labels are, for the latent figure's colour bar."""
    return {"mnist": "digit", "dsprites": "shape"}.get(config.data.dataset, "class")


@torch.no_grad()
def draw_figures(vae: VAE, test_x: torch.Tensor, test_y: torch.Tensor, history,
                 out: Path, labels: str = "class", report: LatentReport | None = None
                 ) -> list[Path]:
    """Samples, ELBO curves and, with an encoder, reconstructions and the latent embedding of
    ``test_x`` (≤ 2000 images, coloured by ``test_y``, whose meaning ``labels`` names); without
    labels, traversals of its first image and the KL of each latent coordinate (of ``report``,
    else computed); with labels, samples of each class. The conditional model reads
    ``test_y``, the semi-supervised one its classifier's argmax. The files drawn (a figure
    that fails is a warning)."""
    shape = vae.config.image_shape
    y = test_y.to(test_x.device) if vae.supervision == "conditional" else None
    figures = {"samples.png": lambda p: plot_samples(vae.sample(64), p, image_shape=shape)}
    if vae.supervision != "none":
        figures["conditional_samples.png"] = lambda p: plot_conditional_samples(
            conditional_samples(vae, 10), vae.num_classes, p, image_shape=shape)
    if vae.amortized:
        n = min(2000, test_x.shape[0])
        figures["reconstructions.png"] = lambda p: plot_reconstructions(
            test_x[:16], vae.reconstruct(test_x[:16], y=None if y is None else y[:16]), p,
            image_shape=shape)
        figures["latent.png"] = lambda p: plot_latent(
            _posterior_means(vae, test_x[:n], None if y is None else y[:n]), test_y[:n], p, labels)
        if vae.supervision == "none":
            report = report or latent_report(vae, test_x)
            figures["traversals.png"] = lambda p: plot_traversals(
                *traversals(vae, test_x, report), report.kl, p, shape, vae.z_dim)
            if report.kl is not None:
                figures["kl_per_dim.png"] = lambda p: plot_kl_per_dim(
                    report.kl, report.variance, ACTIVE_THRESHOLD, p)
    if history:
        figures["elbo_curves.png"] = lambda p: plot_elbo_curves(history, p)
    drawn = [draw(lambda make=make, name=name: make(out / name), name)
             for name, make in figures.items()]
    return [p for p in drawn if p is not None]


def _posterior_means(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder's location for ``x`` (and labels ``y``), pushed through the guide's flow if
    it has one."""
    loc, _, flows = vae.encode(x, y)
    for f in flows:
        loc = f(loc)
    return loc
