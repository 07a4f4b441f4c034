"""Train a VAE on binarized MNIST with SVI, estimate its test log p(x), draw figures.

    python examples/mnist_svi.py                      # the default run (~10 min, 2 CPU cores)
    python examples/mnist_svi.py --epochs 1 --train-subset 500 --test-subset 200

Writes OUT/checkpoint.pt, OUT/metrics.json and figures; prints a summary table.
Every flag: python examples/mnist_svi.py --help
"""
import sys

from pvae.cli import Parser, add_experiment_arguments, run_experiment, run_guarded


def main(argv=None) -> int:
    parser = Parser(prog="python examples/mnist_svi.py", description=__doc__.splitlines()[0])
    add_experiment_arguments(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: run_experiment(args))


if __name__ == "__main__":
    sys.exit(main())
