"""Which rank of a data-parallel run was lost, and the one line a surviving rank says about
it: a process of this machine that exited or is stopped, the reason the failed collective
gave, and what the run's checkpoint still holds."""
import os
import re
import socket
import time
from pathlib import Path


def reason(err: BaseException) -> str:
    """The first sentence of ``err``'s message, without a ``[file:line]`` prefix."""
    text = str(err).strip() or ("this rank was interrupted" if isinstance(err, KeyboardInterrupt)
                                else type(err).__name__)
    return re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0]).split(". ")[0]


def _process_state(pid: int) -> str | None:
    """"exited" or "stopped (frozen)" for a process of this machine, None if it runs."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return "exited"
        return {"Z": "exited", "X": "exited", "T": "stopped (frozen)",
                "t": "stopped (frozen)"}.get(state)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "exited"
    except OSError:
        pass
    return None


def lost_ranks(peers: list[tuple[str, int]], me: int, wait: float = 2.0) -> list[str]:
    """The ranks of this machine other than ``me`` among ``peers`` (each rank's (host, pid))
    that have exited or are stopped, e.g. ``rank 1 of 2 (pid 4242) has exited``, looked at for
    up to ``wait`` seconds (a killed process closes its sockets before it is seen to exit)."""
    here, deadline = socket.gethostname(), time.monotonic() + wait
    while True:
        lost = [f"rank {r} of {len(peers)} (pid {pid}) " + (
            "has exited" if state == "exited" else f"is {state}")
            for r, (host, pid) in enumerate(peers)
            if r != me and host == here and (state := _process_state(pid))]
        if lost or time.monotonic() > deadline:
            return lost
        time.sleep(0.1)


def lost_message(peers: list[tuple[str, int]], lost: list[str], err: BaseException, me: int,
                 checkpoint: str | Path | None = None) -> str:
    """The one line surviving rank ``me`` says when a collective failed or it was stopped: the
    ranks ``lost`` (else the hosts of ``peers`` it could not look at), the reason ``err``
    gives, and how to go on from ``checkpoint`` (the run's, if known)."""
    here = socket.gethostname()
    elsewhere = sorted({host for host, _ in peers if host != here})
    who = " and ".join(lost) or (f"a rank on {', '.join(elsewhere)} stopped answering"
                                 if elsewhere else "another rank stopped answering")
    why = reason(err)
    if checkpoint is None:
        kept = "the checkpoints written so far are intact: rerun with resume=True (the same " \
               "command and settings) to continue"
    elif Path(checkpoint).exists():
        kept = f"{checkpoint}, of the last completed epoch, is intact: rerun with resume=True " \
               "(the same command and settings) to continue"
    else:
        kept = "no epoch had finished, so no checkpoint was written: rerun the command"
    return f"{who} ({why}), so rank {me} stops too; {kept}"
