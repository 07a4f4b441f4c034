"""Train several VAE configurations with the same seed and budget; tabulate test log p(x).

    python examples/compare.py --priors standard vamp flow --guides mlp iaf --epochs 5
    python examples/compare.py --configs "prior=standard,guide=mlp" "prior=vamp,guide=iaf" \\
        --epochs 1 --train-subset 500 --test-subset 200 --eval-samples 100

The first configuration is the baseline. Writes OUT/<config>/ (one run each),
OUT/compare.md, OUT/compare.csv and OUT/compare.png. Same as ``pvae compare``.
Every flag: python examples/compare.py --help
"""
import sys

from pvae.runs.cli import add_compare_arguments, run_compare, run_guarded
from pvae.runs.flags import Parser


def main(argv=None) -> int:
    parser = Parser(prog="python examples/compare.py", description=__doc__.splitlines()[0])
    add_compare_arguments(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: run_compare(args))


if __name__ == "__main__":
    sys.exit(main())
