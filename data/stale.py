"""Files left behind by processes that died: who owns them, and whether the owner is gone.

A temporary data file (data/hdf5.py) and a run folder's lock (dist/runlock.py) carry the host
name and process id of their writer. If that process is gone, the file is stale and may be
removed. Only on the same host can we tell: a pid is meaningless on another machine, so a
file of another host is never called stale (its owner may be alive there).

    python -c "from data.stale import owner; print(owner())"
"""
from __future__ import annotations

import os
import socket
from pathlib import Path


def owner() -> tuple[str, int]:
    """(host name, process id) of this process."""
    return socket.gethostname(), os.getpid()


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (signal 0 checks without sending).
    A zombie -- killed, not yet reaped by its parent -- does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, belongs to someone else
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):   # no /proc (macOS), or it just went
        return True
    return state not in ("Z", "X")


def is_stale(host: str, pid: int) -> bool:
    """The owner (host, pid) is known to be dead: same host, no such process."""
    return host == socket.gethostname() and pid != os.getpid() and not process_alive(pid)
