"""Data-parallel runs with ``torch.distributed`` (docs/scaling.rst): the process group that
torchrun's environment describes, this process's place in it, and :func:`shard` /
:func:`gather`, which split per-example work across the ranks and put it back in order.
Without torchrun every function here is the identity of one process."""
import contextlib
import datetime
import os
import re
import socket
from pathlib import Path
from typing import Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from ..checks import SEED_LIMIT, env_seconds
from ..errors import ConfigError, PvaeError
from .ranks import lost_message, lost_ranks, reason

TIMEOUT = 600.0
"""Seconds a collective waits for the other ranks (``PVAE_DIST_TIMEOUT`` overrides it)."""
T = TypeVar("T")


TRANSPORT_FAILURE = re.compile(r"gloo|nccl|connection (closed|reset)|timed out|timeout|"
                               r"broken pipe|by peer", re.IGNORECASE)
"""What the message of a collective that lost a rank says."""


class RankFailed(PvaeError):
    """Another rank of a data-parallel run failed; its own error line names the cause."""


class RankLost(PvaeError):
    """Another rank of a data-parallel run stopped answering (killed, frozen, its machine gone)
    while this one waited for it in a collective."""


def timeout() -> float:
    """``PVAE_DIST_TIMEOUT`` in seconds if set, else :data:`TIMEOUT`."""
    return env_seconds("PVAE_DIST_TIMEOUT", TIMEOUT)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip() or str(default)
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {text!r}; unset it, or let "
                          "torchrun set it") from None


def env_world_size() -> int:
    """The ``WORLD_SIZE`` torchrun set for this process (1 when it is not set)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def env_rank() -> int:
    """The ``RANK`` torchrun set for this process (0 when it is not set)."""
    return _env_int("RANK", 0)


def env_local_rank() -> int:
    """The ``LOCAL_RANK`` torchrun set for this process, its rank on its machine (0 if unset)."""
    return _env_int("LOCAL_RANK", 0)


@contextlib.contextmanager
def process_group(device_type: str = "cpu", checkpoint: str | Path | None = None
                  ) -> Iterator[int]:
    """Join torchrun's process group (NCCL for CUDA, each rank on GPU ``LOCAL_RANK``, else
    gloo) if it has several ranks and none is joined; leave it on exit. Yields the world size.
    A rank lost on the way (a collective that failed, or torchrun stopping this one) is a
    :class:`RankLost` that names it and says what ``checkpoint`` (the run's) holds."""
    if env_world_size() == 1 or (dist.is_available() and dist.is_initialized()):
        yield world_size()
        return
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 asks for a data-parallel run, but this torch was "
                          "built without torch.distributed")
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is {env_world_size()} but {', '.join(missing)} are not "
                          "set; start data-parallel runs with torchrun")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    peers = _join(backend)
    try:
        try:
            yield world_size()
            # every rank is done before any leaves: rank 0 hosts the store the others still
            # use while they tear down (a rank whose store vanished aborts the process)
            dist.barrier()
        except (RuntimeError, KeyboardInterrupt) as err:
            try:  # a signal counts when torchrun stops us for a lost rank
                lost = lost_ranks(peers, rank())
            except KeyboardInterrupt:  # torchrun stopping this rank while it looks
                lost = lost_ranks(peers, rank(), wait=0)
            if not (lost if isinstance(err, KeyboardInterrupt) else
                    TRANSPORT_FAILURE.search(str(err))):
                raise
            raise RankLost(lost_message(peers, lost, err, rank(), checkpoint), "resume") from None
    finally:
        dist.destroy_process_group()


def _join(backend: str) -> list[tuple[str, int]]:
    """Start the process group; each rank's (host, pid). A rank that does not join within
    ``PVAE_DIST_TIMEOUT`` seconds (killed or frozen as it starts) is a :class:`RankLost`."""
    started = False
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout()))
        started = True
        peers: list = [None] * world_size()
        dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
        return peers
    except RuntimeError as err:
        if started:
            dist.destroy_process_group()
        if not TRANSPORT_FAILURE.search(str(err)):
            raise
        raise RankLost(f"one of the {env_world_size()} ranks did not join the run "
                       f"({reason(err)}), so rank {env_rank()} stops too; no epoch had run: "
                       "rerun the command") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """The one device check of every entry point: ``auto`` is CUDA when available, else CPU;
    ``cuda`` or ``cuda:N`` without that GPU, or any other name, is a ConfigError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}", "device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} was asked for but torch sees no GPU; use device cpu "
                          "or auto", "device")
    chosen = torch.device(name)
    if chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name} was asked for but torch sees "
                          f"{torch.cuda.device_count()} GPU(s), cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}", "device")
    return chosen


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of rank ``rank``'s RNGs in ``epoch`` of a data-parallel run: distinct per rank,
    and a function of (seed, epoch, rank) alone, so a resumed run draws the same noise."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + rank) % (SEED_LIMIT + 1)


def world_size() -> int:
    """The number of ranks in the joined process group (1 when none is joined)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the joined process group (0 when none is joined)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, the one rank that writes files."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for CUDA in a process group, else ``device``."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


def _comm_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed elementwise over the ranks, float64 (``t`` itself for a single process)."""
    if world_size() == 1:
        return t
    out = t.to(_comm_device(), torch.float64)
    dist.all_reduce(out)
    return out


def barrier() -> None:
    """Wait until every rank reaches this point (no-op for a single process)."""
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def together(what: str) -> Iterator[None]:
    """Run the block on every rank and agree on its outcome: if it raised on any rank, it
    raises on all (:class:`RankFailed` elsewhere), so no rank waits for one that gave up."""
    failed: BaseException | None = None
    try:
        yield
    except BaseException as err:  # re-raised below, after the ranks agree
        failed = err
    if world_size() > 1:
        count = float(sum_over_ranks(torch.tensor([float(failed is not None)]))[0])
        if failed is None and count > 0:
            raise RankFailed(f"{int(count)} other rank(s) failed while {what}; their error "
                             "lines name the cause")
    if failed is not None:
        raise failed


def bounds(n: int, ranks: int | None = None) -> list[int]:
    """Where each rank's contiguous share of ``n`` examples starts, and ``n`` at the end:
    the first ``n mod W`` ranks get ⌈n/W⌉ examples, the others ⌊n/W⌋."""
    ranks = world_size() if ranks is None else ranks
    base, extra = divmod(int(n), ranks)
    return [r * base + min(r, extra) for r in range(ranks + 1)]


def shard(x: T) -> T:
    """This rank's contiguous share (:func:`bounds`) of the examples along dim 0 of ``x``;
    ConfigError (on every rank) if ``x`` has fewer examples than there are ranks."""
    if world_size() == 1:
        return x
    if len(x) < world_size():
        raise ConfigError(f"{len(x)} example(s) cannot be split across {world_size()} ranks; "
                          "give at least one per rank")
    cut = bounds(len(x))
    return x[cut[rank()]:cut[rank() + 1]]


def gather(piece: T) -> T:
    """Every rank's ``piece`` (per-example results of its :func:`shard`, a tensor or NumPy
    array) concatenated in rank order on every rank: the result for the whole input, in order."""
    if world_size() == 1:
        return piece
    as_numpy = isinstance(piece, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(piece)) if as_numpy else piece
    dev = _comm_device()
    sizes = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s) for s in all_sizes]
    padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[:t.shape[0]] = t.to(dev)
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded)
    whole = torch.cat([p[:c] for p, c in zip(pieces, counts)]).to(t.device)
    return whole.numpy() if as_numpy else whole
