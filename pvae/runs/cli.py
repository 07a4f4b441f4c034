"""The ``pvae`` command line: ``pvae train|evaluate|gap|plot|compare|score|disentangle``, its
flags generated (:mod:`pvae.runs.flags`); a usage error or a :class:`pvae.errors.PvaeError` is
one line on stderr and exit status 2."""
import argparse
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import pyro

from ..errors import ConfigError, DataError
from ..files import check_writable
from ..infer.amortization import gap_report
from ..training import checkpoint, distributed
from ..training.loop import resolve_device
from . import experiment, uses
from .comparison import compare, format_table, grid, parse_setting
from .config import RunConfig
from .flags import Parser, add_part_options, add_settings, as_flags, parsed, run_config
from .guard import run_guarded
from .plotting import plot_gap
from .evaluation import (ROWS, estimate, estimate_rows, format_number, format_rows, train_rows,
                         versions, write, write_json)
from .labels import accuracy_metrics, evaluation_labels, given_y, label_rows
from .outliers import SHIFTS

DATA_FLAGS = ("data_dir", "test_subset", "device", "seed", "progress")
"""The settings of a command that reads a checkpoint, besides its own."""
LOCAL_FIT = ("local_steps", "local_lr", "local_particles", "local_window", "local_patience",
             "local_seconds")
"""The budget of the per-image local fits."""
NUM_SAMPLES = {"eval_samples": "--num-samples"}


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
    return run_guarded(lambda: COMMANDS[args.command][1](args), args.command)


def parse(prog: str, argv: Sequence[str] | None = None, description: str = "",
          defaults: dict | None = None) -> RunConfig:
    """The run configuration of ``argv``'s training flags (``defaults`` replacing RunConfig's),
    for an example script; a bad flag exits with one line."""
    parser = Parser(prog=prog, description=description)
    add_train_arguments(parser, defaults)
    args = parser.parse_args(argv)
    try:
        return run_config(args, args.settings, args.options)
    except ConfigError as err:
        parser.exit(2, f"error: {as_flags(err)}\n")


def add_train_arguments(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """Every setting of a run (``defaults`` replacing RunConfig's) and every part option."""
    p.set_defaults(settings=add_settings(p, defaults=defaults), options=add_part_options(p))


def run_train(args: argparse.Namespace) -> int:
    """Train and evaluate a VAE on MNIST or another dataset (the main job); print the summary
    table. Under torchrun every rank trains, rank 0 reports."""
    metrics = experiment.run(run_config(args, args.settings, args.options))
    if distributed.env_rank() == 0:  # under torchrun, rank 0 reports
        print(summary(metrics))
        print(f"wrote {args.out}/metrics.json, checkpoint.pt and figures")
    return 0


def summary(metrics: dict) -> str:
    """The summary table of a training run's metrics."""
    rows = train_rows(metrics)
    for rows_of in ROWS.values():
        rows += rows_of(metrics)
    return format_rows(rows + label_rows(metrics))


def _checkpoint_arguments(p: argparse.ArgumentParser, names: Sequence[str], out_help: str, *,
                          out_required: bool = False, defaults=None, aliases=None,
                          scored: bool = False) -> None:
    """--checkpoint, --out, --dataset (the test set, default the checkpoint's; with ``scored``
    the images to score, ``args.other_dataset``) and the settings ``names``."""
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by pvae train")
    p.add_argument("--out", required=out_required, default=None, help=out_help)
    p.add_argument("--dataset", default=None, metavar="NAME|PATH",
                   dest="other_dataset" if scored else "dataset",
                   help="mnist, fashion-mnist, kmnist, dsprites, or an .npy/.npz file or image "
                   f"folder: {'the images to score' if scored else 'the test set'} (default: "
                   "the checkpoint's)")
    p.set_defaults(dataset=None)
    p.set_defaults(settings=add_settings(p, [*DATA_FLAGS, *names], defaults=defaults,
                                         aliases=aliases))


def open_checkpoint(args: argparse.Namespace, default_out: str | None = None):
    """``(vae, config, out, data, state)`` of --checkpoint with the command's flags applied."""
    ckpt = checkpoint.read(args.checkpoint)
    vae = checkpoint.to_vae(ckpt, args.checkpoint, device=resolve_device(args.device))
    base = RunConfig.from_dict(ckpt.config, strict=False)
    config = run_config(args, args.settings, base=base).replace(
        dataset=args.dataset or base.data.dataset)
    out = check_writable(args.out or Path(args.checkpoint).parent / (default_out or ""))
    data = config.data.replace(train_subset=1, labelled=None).load(
        vae.likelihood.data_kind == "binary")
    if math.prod(data.image_shape) != vae.x_dim:
        trained, given = ("×".join(map(str, shape)) for shape in (
            vae.config.image_shape or (vae.x_dim,), data.image_shape))
        raise DataError(f"the model of {args.checkpoint} was trained on {trained} images and "
                        f"{config.data.dataset}'s are {given}; evaluate it on images of the "
                        "size it was trained on")
    pyro.set_rng_seed(config.train.seed or 0)
    return vae, config, out, data, ckpt.state


def _record(args: argparse.Namespace, config: RunConfig, vae) -> dict:
    return {"checkpoint": str(args.checkpoint), "config": config.to_dict(),
            "device": str(vae.device), "versions": versions()}


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    _checkpoint_arguments(p, ["method", "eval_samples", "proposal", "chunk_size", "ais_steps",
                              "ais_chains", "ais_leapfrog", "ais_compile", *LOCAL_FIT],
                          "folder for the metrics file, the per-image values and the figure "
                          "(default: the checkpoint's folder/eval)",
                          defaults={"eval_samples": 5000}, aliases=NUM_SAMPLES)


def run_evaluate(args: argparse.Namespace) -> int:
    """Test log p(x) of a checkpoint by a registered estimator: importance sampling with PSIS
    k-hat, AIS, or BDMC."""
    if args.method != "is" and args.proposal != "encoder":
        raise ConfigError("proposal applies to method is only", "proposal", "method")
    vae, config, out, data, _ = open_checkpoint(args, "eval")
    method = config.eval.method
    if vae.supervision != "none" and config.eval.proposal != "encoder":
        raise ConfigError("proposal refined fits q* to x alone and does not handle labels yet; "
                          "use proposal encoder", "proposal")
    x, y = data.test_x.to(vae.device), data.test_y.to(vae.device)
    result = estimate(method, vae, x, config.eval, config.progress,
                      **evaluation_labels(vae, y))
    metrics = result.to_metrics()
    metrics = {**(given_y(metrics) if vae.supervision == "conditional" else metrics),
               **accuracy_metrics(vae, x, y), **_record(args, config, vae)}
    write_json(out / f"metrics_{method}.json", metrics)
    files = write(method, result, out)
    print(format_rows(ROWS[method](metrics) + label_rows(metrics)))
    print(f"wrote {out / f'metrics_{method}.json'} and {', '.join(p.name for p in files)}")
    return 0


def _gap_arguments(p: argparse.ArgumentParser) -> None:
    _checkpoint_arguments(p, ["eval_samples", "elbo_samples", "chunk_size", "local_init",
                              *LOCAL_FIT], "folder for gap.json and gap.png (required)",
                          out_required=True, defaults={"eval_samples": 5000, "test_subset": 100},
                          aliases={**NUM_SAMPLES, **dict(zip(("local_init", *LOCAL_FIT), (
                              "--init", "--max-steps", "--lr", "--num-particles", "--window",
                              "--patience", "--max-seconds-per-image")))})


def run_gap(args: argparse.Namespace) -> int:
    """Approximation and amortization gaps of a checkpoint on test images."""
    vae, config, out, data, _ = open_checkpoint(args)
    if vae.supervision != "none":
        raise ConfigError(f"the gaps are implemented for models without labels; this one has "
                          f"supervision {vae.supervision}")
    e, x = config.eval, data.test_x.to(vae.device)
    report = gap_report(vae, x, num_samples=e.eval_samples, elbo_samples=e.elbo_samples,
                        chunk_size=e.chunk_size, progress=config.progress,
                        **e.local_fit(x.shape[0]))
    s = report.to_metrics()
    write_json(out / "gap.json", {**s, **_record(args, config, vae)})
    figure = plot_gap(report, out / "gap.png")
    estimates = [(f"log p(x) (IS, K={s['num_samples']}, {s['log_px_proposal']} proposal)",
                  "log_px"), ("log p(x) (IS, amortized proposal)", "log_px_amortized"),
                 ("L[q*] (local fit)", "elbo_local"), ("L[q] (amortized)", "elbo_amortized"),
                 ("approximation gap", "approximation_gap"),
                 ("amortization gap", "amortization_gap")]
    budget = "" if s["local_converged"] else " (budget reached)"
    if s["amortization_gap"] is None:
        estimates[-1] = ("amortization gap: n/a, trained without an encoder", "amortization_gap")
    print(format_rows([("test images", f"{s['n']}"),
                       ("local q* family", s["local_family_description"]),
                       *estimate_rows(s, estimates),
                       ("seconds per image", "amortized " + format_number(
                           s["seconds_per_example_amortized"], 5) +
                        f", local {s['seconds_per_example_local']:.2e}"),
                       ("local-fit steps", f"{s['local_steps']}{budget}")]))
    print(f"wrote {out / 'gap.json'} and {figure}")
    return 0


def _plot_arguments(p: argparse.ArgumentParser) -> None:
    _checkpoint_arguments(p, [], "folder for the figures (default: the checkpoint's folder)",
                          defaults={"test_subset": 2000})


def run_plot(args: argparse.Namespace) -> int:
    """Draw a checkpoint's reconstructions, samples, latent embedding and ELBO curves
    (evaluation.png comes from pvae evaluate)."""
    vae, config, out, data, state = open_checkpoint(args)
    written = experiment.draw_figures(vae, data.test_x.to(vae.device), data.test_y,
                                      state.history if state is not None else (), out,
                                      experiment.label_name(config))
    print(f"wrote {', '.join(path.name for path in written)} to {out}")
    return 0


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """The training flags (the shared budget) plus the configurations to compare."""
    add_train_arguments(p, {"out": "runs/compare"})
    g = p.add_argument_group("configurations (the first one is the baseline)")
    g.add_argument("--configs", nargs="+", default=None, metavar="KEY=VALUE,...",
                   help="e.g. 'prior=standard,guide=mlp' 'prior=vamp,guide=iaf'; keys are "
                        "setting names (the flags with _ for -) or part options (default: none; "
                        "give these or grid axes)")
    for axis in ("priors", "guides", "likelihoods", "losses"):
        g.add_argument(f"--{axis}", nargs="+", default=None,
                       help="grid axis: every combination of the axes given is trained "
                            "(default: none)")
    g.add_argument("--reuse", action="store_true",
                   help="read a sub-run's metrics.json, not retrain, if its configuration "
                        "matches (default: retrain)")


def run_compare(args: argparse.Namespace) -> int:
    """Train several configurations with one seed and budget; tabulate log p(x)."""
    axes = {"prior": args.priors, "guide": args.guides, "likelihood": args.likelihoods,
            "loss": args.losses}
    if args.configs and any(axes.values()):
        raise ConfigError("give either --configs or grid axes (--priors/--guides/...), not both")
    settings = [parse_setting(c) for c in args.configs] if args.configs else grid(**axes)
    base = run_config(args, args.settings)
    rows = compare(base, settings, args.out, reuse=args.reuse,
                   options=parsed(args, (), args.options))
    print(format_table(rows, base))
    print(f"wrote {args.out}/compare.md, compare.csv and compare.png")
    return 0


def _score_arguments(p: argparse.ArgumentParser) -> None:
    _checkpoint_arguments(p, ["method", "eval_samples", "chunk_size", "ais_steps", "ais_chains",
                              "ais_leapfrog"], "folder for scores.npy, scores.png and "
                          "metrics_score.json (required)", out_required=True, aliases=NUM_SAMPLES,
                          scored=True)
    p.add_argument("--classes", default=None, metavar="LIST", help="score the test images of "
                   "these labels, e.g. 5-9 (default: all of --dataset)")
    p.add_argument("--shift", default=None, choices=SHIFTS, help="score the test images "
                   "inverted (1 - x), with noise (+N(0, 0.3²), clipped) or rotated by 90° "
                   "(default: none)")


def run_score(args: argparse.Namespace) -> int:
    """Outlier scores of other images under a checkpoint: log p(x) by a registered estimator,
    raw and corrected by the PNG length, against the checkpoint's own test set."""
    uses.check_score(args.other_dataset, args.classes, args.shift, args.method)
    vae, config, out, data, _ = open_checkpoint(args)
    metrics = uses.score(vae, config, data, out, dataset=args.other_dataset,
                         classes=args.classes, shift=args.shift, record=_record(args, config, vae),
                         progress=config.progress and sys.stderr.isatty())
    print(format_rows(uses.score_rows(metrics)))
    print(f"wrote {out / 'metrics_score.json'}, scores.npy and scores.png")
    return 0


def _disentangle_arguments(p: argparse.ArgumentParser) -> None:
    _checkpoint_arguments(p, [], "folder for metrics_disentangle.json and disentangle.png "
                          "(required)", out_required=True, defaults={"test_subset": 2000})
    p.add_argument("--num-codes", type=int, default=10000, metavar="N", help="images for MIG "
                   "(default: %(default)s)")
    p.add_argument("--votes", type=int, nargs=2, default=[800, 800], metavar=("TRAIN", "EVAL"),
                   help="FactorVAE metric: votes to fit and to score (default: 800 800)")
    p.add_argument("--vote-batch", type=int, default=64, metavar="L",
                   help="FactorVAE metric: images per vote (default: %(default)s)")


def run_disentangle(args: argparse.Namespace) -> int:
    """MIG and the FactorVAE metric of a checkpoint trained on a dataset with known factors
    (dsprites), beside its reconstruction term."""
    uses.check_budget(args.num_codes, args.votes, args.vote_batch)
    vae, config, out, data, _ = open_checkpoint(args)
    metrics = uses.disentangle(vae, config, data, out, num_codes=args.num_codes,
                               votes=tuple(args.votes), batch=args.vote_batch,
                               record=_record(args, config, vae))
    print(format_rows(uses.disentangle_rows(metrics)))
    print(f"wrote {out / 'metrics_disentangle.json'} and disentangle.png")
    return 0


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "train": (add_train_arguments, run_train),
    "evaluate": (_evaluate_arguments, run_evaluate),
    "gap": (_gap_arguments, run_gap),
    "plot": (_plot_arguments, run_plot),
    "compare": (add_compare_arguments, run_compare),
    "score": (_score_arguments, run_score),
    "disentangle": (_disentangle_arguments, run_disentangle),
}
