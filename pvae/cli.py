"""The ``pvae`` command line: ``pvae train|evaluate|gap|plot|compare``.

:data:`COMMANDS` maps each subcommand to ``(add_arguments(parser), run(args) -> int)``; the
first paragraph of ``run``'s docstring is its help. Usage errors (:class:`Parser`) and errors
a user can fix (:class:`pvae.errors.PvaeError`) are one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyro

from . import checkpoint, datasets, distributed, experiment
from .amortization import gap_report
from .compare import compare, format_table, grid, option_names, parse_setting
from .errors import ConfigError, PvaeError
from .evaluate import PROPOSALS, ais, bdmc, evaluate
from .experiment import (AIS_CHAINS, AIS_LEAPFROG, AIS_PER_EXAMPLE_FILE, AIS_STEPS, METHODS,
                         NO_TEST_EVALUATION, ExperimentConfig, ais_budget, ais_rows,
                         draw_figures, estimate_rows, format_number, format_rows, test_rows,
                         versions, write_json)
from .files import check_writable
from .nets import ACTIVATIONS
from .objectives import OBJECTIVES
from .plotting import plot_ais, plot_evaluation, plot_gap
from .recipes import RECIPES
from .train import resolve_device
from .vae import REGISTRIES


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: the problem, then where help is."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def run_guarded(fn: Callable[[], int]) -> int:
    """Run ``fn``; print a PvaeError as one line (exit 2), Ctrl-C as exit 130. Under torchrun
    only rank 0 logs progress; every rank prints its errors."""
    logging.basicConfig(level=logging.INFO if distributed.env_rank() == 0 else logging.WARNING,
                        format="%(message)s")
    try:
        return int(fn() or 0)
    except PvaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last completed epoch's checkpoint is kept; rerun with --resume",
              file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pvae`` console script."""
    parser = Parser(prog="pvae", description="VAEs as Pyro programs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (add_arguments, run) in COMMANDS.items():
        help_text = " ".join(run.__doc__.split("\n\n")[0].split())
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # refused by the subcommand, so the error names its --help
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return run_guarded(lambda: COMMANDS[args.command][1](args))


def number_type(kind: type, accept: Callable, must: str) -> Callable[[str], float]:
    """An argparse type: ``kind(text)`` when ``accept`` takes it, else the error "must <must>"."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must {must}, got {text}")
        return value

    return parse


positive_int = number_type(int, lambda v: v >= 1, "be at least 1")
seed_int = number_type(int, lambda v: 0 <= v <= 2**32 - 1, "lie in [0, 4294967295]")
nonnegative_float = number_type(float, lambda v: 0 <= v < math.inf, "be a finite number >= 0")
positive_float = number_type(float, lambda v: 0 < v < math.inf, "be a finite number > 0")


def add_shared_arguments(p, test_subset: int | None, subset_help: str, reads_checkpoint=True,
                         sampling: bool = True, seed_help: str | None = None) -> None:
    """The flags the subcommands share; the defaults are ExperimentConfig's."""
    d = ExperimentConfig()
    if reads_checkpoint:
        p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by pvae train")
    p.add_argument("--data-dir", default=d.data_dir,
                   help="where MNIST lives or is fetched to (default: %(default)s)")
    p.add_argument("--dataset", default=None if reads_checkpoint else d.dataset,
                   metavar="NAME|PATH", help="mnist, fashion-mnist, kmnist, or an .npy/.npz "
                   "file or image folder of one's own (default: " + (
                       "the checkpoint's)" if reads_checkpoint else "%(default)s)"))
    p.add_argument("--test-subset", type=positive_int, default=test_subset, metavar="N",
                   help=subset_help)
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    if sampling:
        p.add_argument("--seed", type=seed_int, default=d.seed, help=seed_help)
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_experiment_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of a training run (scripts and metrics.json rely on their names); defaults
    are ExperimentConfig's."""
    d = ExperimentConfig()
    g = p.add_argument_group("data, output and run")
    g.add_argument("--out", default=d.out, help="folder for checkpoint.pt, metrics.json, figures")
    g.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images")
    add_shared_arguments(g, None, "evaluate on the first N test images", reads_checkpoint=False)
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in OUT (without it, such a folder is refused)")
    g = p.add_argument_group("model")
    for role, registry in REGISTRIES.items():
        g.add_argument(f"--{role}", default=getattr(d, role), choices=sorted(registry))
    g.add_argument("--z-dim", type=positive_int, default=d.z_dim)
    g.add_argument("--hidden-dims", type=positive_int, nargs="+", default=list(d.hidden_dims),
                   metavar="H", help="hidden widths of encoder and decoder MLPs")
    g.add_argument("--activation", default=d.activation, choices=sorted(ACTIVATIONS))
    g.add_argument("--stochastic-layers", type=int, default=d.stochastic_layers, choices=[1, 2],
                   help="2: the IWAE paper's two-layer model, z2 (50) -> (100, 100) -> z "
                        "(--z-dim, 100 in the paper)")
    g = p.add_argument_group("part options (for the prior, guide or likelihood that takes them)")
    g.add_argument("--num-components", type=positive_int, help="mog prior: mixture components")
    g.add_argument("--num-pseudo-inputs", type=positive_int, help="vamp prior: pseudo-inputs")
    g.add_argument("--free-pseudo-inputs", dest="bounded_pseudo_inputs", action="store_false",
                   default=None, help="vamp prior: pseudo-inputs unbounded, not in [0, 1]")
    g.add_argument("--flow-steps", type=positive_int, help="flow prior / iaf guide: flow steps")
    g.add_argument("--flow-hidden", type=positive_int, nargs="+", metavar="H",
                   help="flow prior / iaf guide: hidden widths of each autoregressive net")
    g.add_argument("--rank", type=positive_int, help="lowrank guide: rank of the covariance factor")
    g.add_argument("--conv-channels", type=positive_int, help="conv guide/decoder: channels")
    g.add_argument("--decoder", choices=["mlp", "conv"], help="the likelihood's decoder network")
    g.add_argument("--likelihood-scale", type=positive_float,
                   help="normal likelihood: the fixed standard deviation σ")
    g.add_argument("--learn-scale", action="store_true", default=None,
                   help="normal likelihood: learn one shared σ")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int, default=d.epochs)
    g.add_argument("--recipe", default=d.recipe, choices=list(RECIPES),
                   help="the training schedule (docs: recipes): " + "; ".join(
                       f"{r.name}: {r.summary}" for r in RECIPES.values()))
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    g.add_argument("--lr", type=positive_float, default=d.lr)
    g.add_argument("--loss", default=d.loss, choices=sorted(OBJECTIVES))
    g.add_argument("--num-particles", type=positive_int, default=d.num_particles)
    g.add_argument("--beta", type=nonnegative_float, default=d.beta,
                   help="weight of the KL term (scales the z site with poutine.scale)")
    g.add_argument("--beta-warmup-epochs", type=nonnegative_float, default=d.beta_warmup_epochs,
                   help="ramp beta linearly from 0 over this many epochs (per step)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-samples", type=positive_int, default=d.eval_samples, metavar="K",
                   help="importance samples per test image for log p(x)")
    g.add_argument("--chunk-size", type=positive_int, default=None, metavar="M",
                   help="latent draws (samples x images) per pass; bounds memory")
    g.add_argument("--method", default=d.method, choices=METHODS,
                   help="is: importance sampling only; ais: also AIS on the first "
                        "--ais-subset test images (test_log_px_ais); bdmc: also BDMC on as "
                        "many simulated images")
    add_ais_arguments(g)
    g.add_argument("--ais-subset", type=positive_int, default=d.ais_subset, metavar="N",
                   help="ais/bdmc: the first N test images (default: %(default)s)")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """An ExperimentConfig from parsed experiment flags; set part options go to ``options``."""
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["hidden_dims"] = tuple(args.hidden_dims)
    values["options"] = {k: (tuple(v) if isinstance(v, list) else v) for k in option_names()
                         if (v := getattr(args, k, None)) is not None}
    values["progress"] = not args.no_progress and sys.stderr.isatty()
    return ExperimentConfig(**values)


def run_experiment(args: argparse.Namespace) -> int:
    """Train and evaluate a VAE on MNIST or another dataset (the main job); print the summary
    table. Under torchrun every rank trains, rank 0 reports."""
    metrics = experiment.run(config_from_args(args))
    if distributed.env_rank() != 0:  # under torchrun, rank 0 reports
        return 0
    rows = [("epochs / steps", f"{metrics['epochs']} / {metrics['steps']}"),
            ("train seconds", f"{metrics['train_seconds']:.1f}"),
            ("train ELBO", format_number(metrics["train_elbo"]))]
    print(format_rows(rows + test_rows(metrics) + ais_rows(metrics)))
    print(f"wrote {args.out}/metrics.json, checkpoint.pt and figures")
    return 0


def open_checkpoint(args: argparse.Namespace):
    """``(vae, out, mnist, record, state)`` from --checkpoint (read once), --out (default: the
    checkpoint's folder), --test-subset; ConfigError, before any data is read, if the guide
    has no encoder."""
    ckpt = checkpoint.read(args.checkpoint)
    vae = checkpoint.to_vae(ckpt, args.checkpoint, device=resolve_device(args.device))
    if not vae.amortized:
        raise ConfigError(f"the guide {vae.config.guide!r} has no encoder for test images; "
                          f"{NO_TEST_EVALUATION}")
    out = check_writable(args.out or Path(args.checkpoint).parent)
    mnist = datasets.load_dataset(args.dataset or vae.config.dataset or "mnist", args.data_dir,
                                  binarize=vae.likelihood.data_kind == "binary",
                                  train_subset=1, test_subset=args.test_subset)
    record = {"checkpoint": str(args.checkpoint), "data_dir": str(args.data_dir),
              "dataset": mnist.name,
              "seed": getattr(args, "seed", None), "device": str(vae.device),
              "versions": versions()}
    return vae, out, mnist, record, ckpt.state


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    add_shared_arguments(p, None, "evaluate the first N test images", seed_help="seed of the "
                         "importance samples (their order also depends on --chunk-size)")
    p.add_argument("--method", default="is", choices=METHODS,
                   help="is: importance sampling (metrics_eval.json); ais: annealed importance "
                        "sampling (metrics_ais.json); bdmc: AIS bounds on images simulated "
                        "from the model, one per test image asked for (metrics_bdmc.json)")
    p.add_argument("--num-samples", type=positive_int, default=5000, metavar="K",
                   help="is: importance samples per test image (5000 is the published protocol)")
    p.add_argument("--proposal", default="encoder", choices=PROPOSALS,
                   help="is: draw from the encoder q(z|x), or from ½q + ½q* with q* fitted to "
                        "each image (tighter weights, a local fit per image first)")
    add_ais_arguments(p)
    p.add_argument("--chunk-size", type=positive_int, default=None, metavar="M",
                   help="latent draws (samples or chains x images) per pass; bounds memory")
    p.add_argument("--out", default=None, help="folder for the metrics file and the figure "
                   "(default: the checkpoint's folder)")


def add_ais_arguments(p) -> None:
    """The AIS budget flags (``pvae evaluate``, the main job)."""
    p.add_argument("--ais-steps", type=positive_int, default=AIS_STEPS, metavar="T",
                   help="ais/bdmc: intermediate distributions (default: %(default)s)")
    p.add_argument("--ais-chains", type=positive_int, default=AIS_CHAINS, metavar="C",
                   help="ais/bdmc: chains per image (default: %(default)s)")
    p.add_argument("--ais-leapfrog", type=positive_int, default=AIS_LEAPFROG, metavar="L",
                   help="ais/bdmc: leapfrog steps per HMC move (default: %(default)s)")


def _evaluate(args: argparse.Namespace) -> int:
    """Test log p(x) of a checkpoint: importance sampling with PSIS k-hat, AIS, or BDMC."""
    if args.method != "is" and args.proposal != "encoder":
        raise ConfigError("--proposal applies to --method is only")
    vae, out, mnist, record, _ = open_checkpoint(args)
    pyro.set_rng_seed(args.seed)
    x = mnist.test_x.to(vae.device)
    progress = not args.no_progress and sys.stderr.isatty()
    if args.method == "is":
        result = evaluate(vae.model, vae.guide, x, num_samples=args.num_samples,
                          chunk_size=args.chunk_size, progress=progress, proposal=args.proposal)
        metrics = {**result.to_metrics(), **record, "chunk_size": args.chunk_size}
        name = "metrics_eval.json"
        suffix = "" if args.proposal == "encoder" else "_refined"
        np.save(out / f"test_log_px_is{suffix}.npy", result.log_px)
        figure = plot_evaluation(result, out / f"evaluation_K{args.num_samples}{suffix}.png")
        rows = test_rows(metrics)
    else:
        budget = ais_budget(args, progress)
        if args.method == "ais":
            result = ais(vae.model, vae.guide, x, **budget)
            np.save(out / AIS_PER_EXAMPLE_FILE, result.log_px.numpy())
        else:
            result = bdmc(vae.model, vae.guide, x, **budget)
        metrics = {**result.to_metrics(), **record, "chunk_size": args.chunk_size}
        name = f"metrics_{args.method}.json"
        figure = plot_ais(result, out / f"{args.method}_T{args.ais_steps}_C{args.ais_chains}.png")
        rows = ais_rows(metrics)
    write_json(out / name, metrics)
    print(format_rows(rows))
    print(f"wrote {out / name} and {figure}")
    return 0


def _gap_arguments(p: argparse.ArgumentParser) -> None:
    add_shared_arguments(p, 100, "the first N test images (each gets its own local fit)")
    p.add_argument("--out", required=True, help="folder for gap.json and gap.png")
    p.add_argument("--num-samples", type=positive_int, default=5000, metavar="K",
                   help="importance samples per image for log p(x)")
    p.add_argument("--elbo-samples", type=positive_int, default=1000, metavar="S",
                   help="samples per image for L[q] and L[q*]")
    p.add_argument("--init", default="encoder", choices=["encoder", "prior"],
                   help="start each local fit from the encoder's output or from N(0, I)")
    p.add_argument("--max-steps", type=positive_int, default=5000, help="local-fit step budget")
    p.add_argument("--lr", type=positive_float, default=1e-2, help="Adam rate of the local fits")
    p.add_argument("--num-particles", type=positive_int, default=16,
                   help="samples per image per local-fit step")
    p.add_argument("--window", type=positive_int, default=50,
                   help="steps averaged per convergence check")
    p.add_argument("--patience", type=positive_int, default=5,
                   help="stop after this many windows without improvement")
    p.add_argument("--max-seconds-per-image", type=positive_float, default=10.0, metavar="S",
                   help="wall-time budget of the local fits: S x the number of images")


def _gap(args: argparse.Namespace) -> int:
    """Approximation and amortization gaps of a checkpoint on test images."""
    vae, out, mnist, record, _ = open_checkpoint(args)
    pyro.set_rng_seed(args.seed)
    report = gap_report(vae, mnist.test_x.to(vae.device), num_samples=args.num_samples,
                        elbo_samples=args.elbo_samples, init=args.init, lr=args.lr,
                        max_steps=args.max_steps, num_particles=args.num_particles,
                        window=args.window, patience=args.patience,
                        max_seconds=args.max_seconds_per_image * len(mnist.test_x),
                        progress=not args.no_progress and sys.stderr.isatty())
    s = report.to_json()
    write_json(out / "gap.json", {**s, **record, "init": args.init})
    figure = plot_gap(report, out / "gap.png")
    estimates = [(f"log p(x) (IS, K={s['num_samples']}, {s['log_px_proposal']} proposal)",
                  "log_px"), ("log p(x) (IS, amortized proposal)", "log_px_amortized"),
                 ("L[q*] (local fit)", "elbo_local"), ("L[q] (amortized)", "elbo_amortized"),
                 ("approximation gap", "approximation_gap"),
                 ("amortization gap", "amortization_gap")]
    budget = "" if s["local_converged"] else " (budget reached)"
    print(format_rows([("test images", f"{s['n']}"),
                       ("local q* family", s["local_family_description"]),
                       *estimate_rows(s, estimates),
                       ("seconds per image", f"amortized {s['seconds_per_example_amortized']:.2e}"
                                             f", local {s['seconds_per_example_local']:.2e}"),
                       ("local-fit steps", f"{s['local_steps']}{budget}")]))
    print(f"wrote {out / 'gap.json'} and {figure}")
    return 0


def _plot_arguments(p: argparse.ArgumentParser) -> None:
    add_shared_arguments(p, 2000, "draw the first N test images (default: %(default)s)",
                         sampling=False)
    p.add_argument("--out", default=None, help="folder for the figures (default: the checkpoint's)")


def _plot(args: argparse.Namespace) -> int:
    """Draw a checkpoint's reconstructions, samples, latent embedding and ELBO curves
    (evaluation.png comes from pvae evaluate)."""
    vae, out, mnist, _, state = open_checkpoint(args)
    written = draw_figures(vae, mnist.test_x.to(vae.device), mnist.test_y,
                           state.history if state is not None else (), out)
    print(f"wrote {', '.join(path.name for path in written)} to {out}")
    return 0


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """The experiment flags (the shared budget) plus the configurations to compare."""
    add_experiment_arguments(p)
    p.set_defaults(out="runs/compare")
    g = p.add_argument_group("configurations (the first one is the baseline)")
    g.add_argument("--configs", nargs="+", default=None, metavar="KEY=VALUE,...",
                   help="e.g. 'prior=standard,guide=mlp' 'prior=vamp,guide=iaf'; keys are "
                        "experiment fields or part options such as num_components")
    for axis in ("priors", "guides", "likelihoods", "losses"):
        g.add_argument(f"--{axis}", nargs="+", default=None,
                       help="grid axis: every combination of the axes given is trained")
    g.add_argument("--reuse", action="store_true",
                   help="read a sub-run's metrics.json, not retrain, if its configuration matches")


def run_compare(args: argparse.Namespace) -> int:
    """Train several configurations with one seed and budget; tabulate log p(x)."""
    axes = {"prior": args.priors, "guide": args.guides, "likelihood": args.likelihoods,
            "loss": args.losses}
    if args.configs and any(axes.values()):
        raise ConfigError("give either --configs or grid axes (--priors/--guides/...), not both")
    settings = [parse_setting(c) for c in args.configs] if args.configs else grid(**axes)
    base = config_from_args(args)
    rows = compare(base, settings, args.out, reuse=args.reuse)
    print(format_table(rows, base))
    print(f"wrote {args.out}/compare.md, compare.csv and compare.png")
    return 0


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "train": (add_experiment_arguments, run_experiment),
    "evaluate": (_evaluate_arguments, _evaluate),
    "gap": (_gap_arguments, _gap),
    "plot": (_plot_arguments, _plot),
    "compare": (add_compare_arguments, run_compare),
}

if __name__ == "__main__":
    sys.exit(main())
