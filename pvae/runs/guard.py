"""How every ``pvae`` command ends: a :class:`pvae.errors.PvaeError` as one ``error:`` line
(exit 2), Ctrl-C or SIGTERM as one line that says what the command keeps (exit 130 or 143)."""
import logging
import signal
import sys
import threading
from typing import Callable

from .. import progress
from ..errors import PvaeError
from ..training import distributed
from .flags import as_flags

INTERRUPTED = {
    "train": "the checkpoint of the last completed epoch is kept; rerun with --resume to "
             "continue (or to finish the evaluation)",
    "evaluate": "no results were written and the checkpoint is unchanged; rerun the command",
    "gap": "no results were written and the checkpoint is unchanged; rerun the command",
    "plot": "the figures drawn so far are written and the checkpoint is unchanged; rerun the "
            "command for the rest",
    "compare": "the configurations that finished are kept; rerun with --reuse to skip them",
    "score": "no scores were written and the checkpoint is unchanged; rerun the command",
    "disentangle": "no results were written and the checkpoint is unchanged; rerun the command",
}
"""What Ctrl-C leaves behind, by command."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler, torchrun stopping the ranks left), raised where the
    run is, so that it stops as it does on Ctrl-C."""


def _terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the run is stopping already
    raise Terminated("this rank was sent SIGTERM")


def run_guarded(fn: Callable[[], int], command: str = "train") -> int:
    """Run ``fn``, the work of ``command``; print a PvaeError as one line (exit 2), Ctrl-C or
    SIGTERM as one line that says what is kept (exit 130 or 143). Under torchrun only rank 0
    logs progress; every rank prints its errors."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        logging.basicConfig(format="%(message)s", level=logging.INFO
                            if distributed.env_rank() == 0 else logging.WARNING)
        progress.interval()  # PVAE_PROGRESS_SECONDS, checked before any work
        return int(fn() or 0)
    except PvaeError as err:
        if main_thread:  # a SIGTERM now (torchrun stopping the ranks left) cuts no line short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"error: {as_flags(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"{how}: {INTERRUPTED[command]}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
