"""Files of a run folder: atomic writes, a lock against two runs in one folder, a write check."""
import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ConfigError, StorageError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

LOCK_NAME = ".pvae.lock"
RUN_FILES = ("metrics.json", "checkpoint.pt")
"""The files whose presence says that a folder holds a run."""
_held: dict[Path, list[int]] = {}  # a folder this process holds: [lock file descriptor, depth]


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync, rename); StorageError on a full disk."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)  # reading the umask sets it: set it back
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is intact" if path.exists() else \
                f"no {path.name} was written"
            raise StorageError(f"the disk holding {path.parent} is full ({err.strerror}) while "
                               f"writing {path.name}; {kept}. Free some space and rerun "
                               "(with resume=True to continue training)", "resume") from err
        raise


def check_writable(out: str | Path) -> Path:
    """Create the folder ``out`` if needed and prove a file can be written there."""
    if out is None or str(out).strip() == "":
        raise ConfigError("out is empty; name the folder for the run's files (e.g. runs/a)",
                          "out")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to {out} ({err.strerror or err}); choose a writable "
                          "folder as out", "out") from err
    return out


def run_marker(out: str | Path) -> str | None:
    """The first of :data:`RUN_FILES` in the folder ``out``, or None if it holds no run."""
    return next((name for name in RUN_FILES if (Path(out) / name).exists()), None)


def claim(out: Path, resume: bool, overwrite: bool) -> None:
    """ConfigError for ``resume`` with ``overwrite``, or for neither when ``out`` holds a run."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: continue the run or "
                          "replace it", "resume", "overwrite")
    marker = run_marker(out)
    if marker and not (resume or overwrite):
        raise ConfigError(f"{out} already holds a run ({marker}); continue it (resume=True), "
                          "replace it (overwrite=True), or choose another out folder", "resume",
                          "overwrite", "out")


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[Path]:
    """Hold the run folder ``out`` for this process (re-entrant); ConfigError if another does."""
    out = check_writable(out).resolve()
    if out not in _held:
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise ConfigError(f"another pvae run ({holder}) is writing to {out}; wait for "
                                  "it to finish or choose another out", "out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        for stale in out.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        _held[out] = [fd, 0]
    _held[out][1] += 1
    try:
        yield out
    finally:
        _held[out][1] -= 1
        if not _held[out][1]:
            os.close(_held.pop(out)[0])
