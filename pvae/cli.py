"""The ``pvae`` command line: ``pvae train|evaluate|gap|plot|compare``.

Each subcommand is a pair ``(add_arguments(parser), run(args) -> int)`` in
:data:`COMMANDS`. Errors a user can fix (:class:`pvae.errors.PvaeError`) are printed as
one line and exit with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Callable, Sequence

from .errors import PvaeError

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register the decorated ``run(args) -> int`` as subcommand ``name``."""

    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (add_arguments, run, help)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(prog="pvae", description="VAEs as Pyro programs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
    return parser


def run_guarded(fn: Callable[[], int]) -> int:
    """Run ``fn``; print a PvaeError as one line (exit 2), Ctrl-C as exit 130."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: COMMANDS[args.command][1](args))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def seed_int(text: str) -> int:
    """argparse type: a seed, an integer in [0, 2**32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 4294967295], got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = nonnegative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0")
    return value


def add_experiment_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of a training run (DESIGN.md's contract); defaults are ExperimentConfig's."""
    from .experiment import ExperimentConfig
    from .guides import GUIDES
    from .likelihoods import LIKELIHOODS
    from .objectives import OBJECTIVES
    from .priors import PRIORS

    d = ExperimentConfig()
    g = p.add_argument_group("data and output")
    g.add_argument("--data-dir", default=d.data_dir, help="where MNIST lives or is fetched to")
    g.add_argument("--out", default=d.out, help="folder for checkpoint.pt, metrics.json, figures")
    g.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images")
    g.add_argument("--test-subset", type=positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images")
    g = p.add_argument_group("model")
    g.add_argument("--prior", default=d.prior, choices=sorted(PRIORS))
    g.add_argument("--guide", default=d.guide, choices=sorted(GUIDES))
    g.add_argument("--likelihood", default=d.likelihood, choices=sorted(LIKELIHOODS))
    g.add_argument("--z-dim", type=positive_int, default=d.z_dim)
    g.add_argument("--hidden-dims", type=positive_int, nargs="+", default=list(d.hidden_dims),
                   metavar="H", help="hidden widths of encoder and decoder MLPs")
    g.add_argument("--activation", default=d.activation, choices=["tanh", "relu", "softplus", "elu"])
    g = p.add_argument_group("part options (passed to the prior, guide and likelihood that use them)")
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
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    g.add_argument("--lr", type=positive_float, default=d.lr)
    g.add_argument("--loss", default=d.loss, choices=sorted(OBJECTIVES))
    g.add_argument("--num-particles", type=positive_int, default=d.num_particles)
    g.add_argument("--beta", type=nonnegative_float, default=d.beta,
                   help="weight of the KL term (scales the z site with poutine.scale)")
    g.add_argument("--beta-warmup-epochs", type=nonnegative_float, default=d.beta_warmup_epochs,
                   help="ramp beta linearly from 0 over this many epochs (per step)")
    g.add_argument("--seed", type=seed_int, default=d.seed)
    g.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in OUT (without it, such a folder is refused)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-samples", type=positive_int, default=d.eval_samples, metavar="K",
                   help="importance samples per test image for log p(x)")
    g.add_argument("--chunk-size", type=positive_int, default=None, metavar="M",
                   help="latent draws (samples x images) per pass; bounds memory")


PART_OPTIONS = ("num_components", "num_pseudo_inputs", "bounded_pseudo_inputs", "flow_steps",
                "flow_hidden", "rank", "conv_channels", "decoder", "likelihood_scale", "learn_scale")


def config_from_args(args: argparse.Namespace):
    """An ExperimentConfig from parsed experiment flags."""
    from .experiment import ExperimentConfig

    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["hidden_dims"] = tuple(args.hidden_dims)
    values["options"] = {k: (tuple(v) if isinstance(v, list) else v) for k in PART_OPTIONS
                         if (v := getattr(args, k, None)) is not None}
    values["progress"] = not args.no_progress and sys.stderr.isatty()
    return ExperimentConfig(**values)


def run_experiment(args: argparse.Namespace) -> int:
    """Train, evaluate and print the summary table of one run."""
    from .experiment import format_summary, run

    metrics = run(config_from_args(args))
    print(format_summary(metrics))
    print(f"wrote {args.out}/metrics.json, checkpoint.pt and figures")
    return 0


# Subcommands. Each block: an add_arguments function and a @command-registered run.
# Library modules are imported inside run(), so `pvae --help` stays fast.

command("train", "train and evaluate a VAE on MNIST (the main job)", add_experiment_arguments)(
    run_experiment)


def _plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by pvae train")
    p.add_argument("--out", default=None, help="folder for the figures (default: the checkpoint's)")
    p.add_argument("--data-dir", default="data", help="the MNIST folder (default: data)")
    p.add_argument("--test-subset", type=positive_int, default=2000, metavar="N")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


@command("plot", "redraw a trained run's figures from its checkpoint", _plot_args)
def _plot(args: argparse.Namespace) -> int:
    from .experiment import plot_checkpoint

    out = plot_checkpoint(args.checkpoint, args.out, args.data_dir, args.test_subset, args.device)
    print(f"wrote reconstructions.png, samples.png, latent.png, elbo_curves.png to {out}")
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by pvae train")
    p.add_argument("--num-samples", type=positive_int, default=5000, metavar="K",
                   help="importance samples per test image (5000 is the published protocol)")
    p.add_argument("--test-subset", type=positive_int, default=None, metavar="N",
                   help="evaluate the first N test images")
    p.add_argument("--chunk-size", type=positive_int, default=None, metavar="M",
                   help="latent draws (samples x images) per forward pass; bounds memory")
    p.add_argument("--data-dir", default="data", help="the MNIST folder (default: data)")
    p.add_argument("--out", default=None, help="folder for metrics_eval.json and the figure "
                   "(default: the checkpoint's folder)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the importance samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("evaluate", "importance-sampled test log p(x), ELBO and PSIS k-hat of a checkpoint",
         _evaluate_args)
def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pyro

    from . import checkpoint
    from .data import load_mnist
    from .errors import ConfigError
    from .evaluate import evaluate
    from .experiment import NO_TEST_EVALUATION, format_rows, versions, write_json
    from .files import check_writable
    from .plotting import plot_evaluation
    from .train import resolve_device

    device = resolve_device(args.device)
    vae = checkpoint.load(args.checkpoint, device=device)
    if not vae.amortized:
        raise ConfigError(f"the guide {vae.config.guide!r} has no encoder for test images; "
                          f"{NO_TEST_EVALUATION}")
    out = check_writable(args.out or Path(args.checkpoint).parent)
    data_dir = args.data_dir
    data = load_mnist(data_dir, binarize=vae.likelihood.data_kind == "binary",
                      test_subset=args.test_subset)
    pyro.set_rng_seed(args.seed)
    result = evaluate(vae.model, vae.guide, data.test_x.to(device), num_samples=args.num_samples,
                      chunk_size=args.chunk_size,
                      progress=not args.no_progress and sys.stderr.isatty())
    metrics = {**result.to_metrics(), "checkpoint": str(args.checkpoint),
               "data_dir": str(data_dir), "chunk_size": args.chunk_size, "seed": args.seed,
               "device": str(device), "versions": versions()}
    write_json(out / "metrics_eval.json", metrics)
    figure = plot_evaluation(result, out / f"evaluation_K{args.num_samples}.png")
    rows = [("test images", f"{result.n}"),
            ("test ELBO", f"{result.elbo_mean:.2f} ± {result.elbo_stderr:.2f}"),
            (f"test log p(x), K={result.num_samples}",
             f"{result.log_px_mean:.2f} ± {result.log_px_stderr:.2f}"),
            *khat_rows(result)]
    print(format_rows(rows))
    print(f"wrote {out / 'metrics_eval.json'} and {figure}")
    return 0


def khat_rows(result) -> list[tuple[str, str]]:
    """The k-hat lines of a summary: unknown (not 0%) when K is too small to fit a tail."""
    if result.khat_max != result.khat_max:
        why = "unknown: K <= 20 is too few draws to fit a tail; raise --num-samples"
        return [("PSIS k-hat", why)]
    return [("PSIS k-hat max", f"{result.khat_max:.2f}"),
            ("k-hat > 0.7", f"{100 * result.khat_frac_bad:.1f}% of images")]


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """The experiment flags (the shared budget) plus the configurations to compare."""
    add_experiment_arguments(p)
    p.set_defaults(out="runs/compare")
    g = p.add_argument_group("configurations (the first one is the baseline)")
    g.add_argument("--configs", nargs="+", default=None, metavar="KEY=VALUE,...",
                   help="e.g. 'prior=standard,guide=mlp' 'prior=vamp,guide=iaf'; keys are "
                        "experiment fields or part options such as num_components")
    g.add_argument("--priors", nargs="+", default=None, help="grid axis (with --guides, ...)")
    g.add_argument("--guides", nargs="+", default=None, help="grid axis")
    g.add_argument("--likelihoods", nargs="+", default=None, help="grid axis")
    g.add_argument("--losses", nargs="+", default=None, help="grid axis")
    g.add_argument("--reuse", action="store_true",
                   help="read a sub-run's metrics.json instead of retraining when its "
                        "configuration matches")


@command("compare", "train several configurations with one seed and budget; tabulate log p(x)",
         add_compare_arguments)
def run_compare(args: argparse.Namespace) -> int:
    """Train every configuration, then print and write OUT/compare.md, .csv and .png."""
    from .compare import compare, format_table, grid, parse_setting
    from .errors import ConfigError

    if args.configs and any((args.priors, args.guides, args.likelihoods, args.losses)):
        raise ConfigError("give either --configs or grid axes (--priors/--guides/...), not both")
    settings = ([parse_setting(c) for c in args.configs] if args.configs else
                grid(prior=args.priors, guide=args.guides, likelihood=args.likelihoods,
                     loss=args.losses))
    base = config_from_args(args)
    rows = compare(base, settings, args.out, reuse=args.reuse)
    print(format_table(rows, base))
    print(f"wrote {args.out}/compare.md, compare.csv and compare.png")
    return 0


def _gap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by pvae train")
    p.add_argument("--out", required=True, help="folder for gap.json and gap.png")
    p.add_argument("--test-subset", type=positive_int, default=100, metavar="N",
                   help="the first N test images (each gets its own local fit)")
    p.add_argument("--num-samples", type=positive_int, default=5000, metavar="K",
                   help="importance samples per image for log p(x)")
    p.add_argument("--elbo-samples", type=positive_int, default=1000, metavar="S",
                   help="samples per image for L[q] and L[q*]")
    p.add_argument("--data-dir", default="data", help="the MNIST folder (default: data)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--init", default="encoder", choices=["encoder", "prior"],
                   help="start each local fit from the encoder's output or from N(0, I)")
    p.add_argument("--max-steps", type=positive_int, default=5000,
                   help="step budget of the local fits")
    p.add_argument("--lr", type=positive_float, default=1e-2, help="Adam rate of the local fits")
    p.add_argument("--num-particles", type=positive_int, default=16,
                   help="samples per image per local-fit step")
    p.add_argument("--window", type=positive_int, default=50,
                   help="steps averaged per convergence check")
    p.add_argument("--patience", type=positive_int, default=5,
                   help="stop after this many windows without improvement")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("gap", "approximation and amortization gaps of a checkpoint on test images", _gap_args)
def _gap(args: argparse.Namespace) -> int:
    import pyro

    from . import checkpoint
    from .amortization import gap_report
    from .data import load_mnist
    from .experiment import format_rows, versions, write_json
    from .files import check_writable
    from .plotting import plot_gap
    from .train import resolve_device

    device = resolve_device(args.device)
    vae = checkpoint.load(args.checkpoint, device=device)
    out = check_writable(args.out)
    data_dir = args.data_dir
    data = load_mnist(data_dir, binarize=vae.likelihood.data_kind == "binary",
                      test_subset=args.test_subset)
    pyro.set_rng_seed(args.seed)
    report = gap_report(vae, data.test_x.to(device),
                        num_samples=args.num_samples, elbo_samples=args.elbo_samples,
                        init=args.init, max_steps=args.max_steps, lr=args.lr,
                        num_particles=args.num_particles, window=args.window,
                        patience=args.patience,
                        progress=not args.no_progress and sys.stderr.isatty())
    s = report.to_json()
    write_json(out / "gap.json", {**s, "checkpoint": str(args.checkpoint),
                                  "data_dir": str(data_dir), "seed": args.seed, "init": args.init,
                                  "device": str(device), "versions": versions()})
    figure = plot_gap(report, out / "gap.png")
    rows = [("test images", f"{s['n']}"),
            (f"log p(x) (IS, K={s['num_samples']}, {s['log_px_proposal']} proposal)",
             f"{s['log_px']:.2f} ± {s['log_px_stderr'] or 0:.2f}"),
            ("log p(x) (IS, amortized proposal)",
             f"{s['log_px_amortized']:.2f} ± {s['log_px_amortized_stderr'] or 0:.2f}"),
            ("L[q*] (local fit)", f"{s['elbo_local']:.2f} ± {s['elbo_local_stderr'] or 0:.2f}"),
            ("L[q] (amortized)",
             f"{s['elbo_amortized']:.2f} ± {s['elbo_amortized_stderr'] or 0:.2f}"),
            ("approximation gap", f"{s['approximation_gap']:.2f} ± "
                                  f"{s['approximation_gap_stderr'] or 0:.2f}"),
            ("amortization gap", f"{s['amortization_gap']:.2f} ± "
                                 f"{s['amortization_gap_stderr'] or 0:.2f}"),
            ("seconds per image", f"amortized {s['seconds_per_example_amortized']:.2e}, "
                                  f"local {s['seconds_per_example_local']:.2e}"),
            ("local-fit steps", f"{s['local_steps']}"
                                f"{'' if s['local_converged'] else ' (budget reached)'}")]
    print(format_rows(rows))
    print(f"wrote {out / 'gap.json'} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
