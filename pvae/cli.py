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
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-samples", type=positive_int, default=d.eval_samples, metavar="K",
                   help="importance samples per test image for log p(x)")
    g.add_argument("--chunk-size", type=positive_int, default=None, metavar="M",
                   help="importance samples per pass (bounds memory)")


def config_from_args(args: argparse.Namespace):
    """An ExperimentConfig from parsed experiment flags."""
    from .experiment import ExperimentConfig

    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["hidden_dims"] = tuple(args.hidden_dims)
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

if __name__ == "__main__":
    sys.exit(main())
