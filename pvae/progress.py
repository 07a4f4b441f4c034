"""Progress of a long loop: tqdm's bar when stderr is a terminal, else (a log file, CI, a pipe)
one logging line every ``PVAE_PROGRESS_SECONDS`` seconds (default 30), so a run that writes no
terminal still says how far it is, and a log file gets no carriage-return bars."""
import logging
import sys
import time
from typing import Any, Iterable

from tqdm.auto import tqdm

from .checks import env_seconds

log = logging.getLogger(__name__)
INTERVAL = 30.0
"""Seconds between two progress lines off a terminal (``PVAE_PROGRESS_SECONDS`` overrides)."""


class LogProgress:
    """The part of tqdm's interface pvae uses (``update``, ``set_postfix``, ``close``, iteration,
    ``with``), reporting ``desc: n/total unit (p%), s elapsed, about r s left`` to the log at
    most once per ``interval`` seconds."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str,
                 interval: float):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.interval, self.n, self.postfix = interval, 0, ""
        self.start = self.last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count, e.g. ``elbo=-98.1``."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; log a line if ``interval`` seconds have passed since the last."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            log.info("%s", self.line(now - self.start))

    def line(self, elapsed: float) -> str:
        """The progress line after ``elapsed`` seconds."""
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
            left = elapsed * (self.total - self.n) / self.n if self.n else None
            text += f", {elapsed:.0f} s" + (f", about {left:.0f} s left" if left else "")
        else:
            text += f" {self.unit}, {elapsed:.0f} s"
        return text + (f"; {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        """Nothing to clear: log lines stay."""


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, leave: bool = True):
    """A progress reporter over ``iterable`` (or counted with ``update``): none unless
    ``enabled``; tqdm on a terminal; :class:`LogProgress` elsewhere."""
    if not enabled or sys.stderr is None or sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave,
                    disable=not enabled, dynamic_ncols=True)
    return LogProgress(iterable, total, desc, unit, interval())


def interval() -> float:
    """``PVAE_PROGRESS_SECONDS`` if set, else :data:`INTERVAL`; ConfigError if it is no number."""
    return env_seconds("PVAE_PROGRESS_SECONDS", INTERVAL)
