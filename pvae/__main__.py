"""``python -m pvae``: the ``pvae`` command line."""
import sys

from .runs.cli import main

sys.exit(main())
