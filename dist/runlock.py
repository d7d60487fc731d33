"""One job per run folder: a lock file naming the host and process that own the folder.

    lock = RunLock.acquire(Path("runs/cnn-1"))   # rank 0, before it writes anything there
    ...
    lock.release()                               # at exit (also after an error or a stop)

The lock is ``runs/<name>/lock``, created with O_CREAT|O_EXCL (atomic, also on NFS), holding
``host pid start-time``. A second job that finds it is refused with one line naming the owner.
A lock whose process is dead on this host (the job was SIGKILLed, the node rebooted) is stale:
it is taken over with a note. A lock of another host cannot be checked from here; if that job
is gone, delete the file (the message says so). ``cat runs/<name>/lock`` shows the owner.

    python -m dist.runlock runs/<name>     # who holds it, and whether that process is alive
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from data.stale import is_stale, owner, process_alive
from dist.errors import ExpectedError

LOCK_NAME = "lock"


def read_owner(path: Path) -> tuple[str, int, str] | None:
    """(host, pid, started) recorded in a lock file, or None if unreadable/half-written."""
    try:
        host, pid, started = path.read_text().split(maxsplit=2)
        return host, int(pid), started.strip()
    except (OSError, ValueError):
        return None


class RunLock:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def acquire(cls, run_dir: Path, report=print) -> "RunLock":
        """Take ``run_dir``'s lock (creating the folder) or raise ExpectedError."""
        run_dir = Path(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ExpectedError(f"{run_dir}: cannot create the run folder "
                                f"({err.strerror or err}); check run.dir") from None
        path = run_dir / LOCK_NAME
        host, pid = owner()
        for _ in range(3):   # a stale lock is taken over once; then someone else won
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                held = read_owner(path)
                if held is not None and held[:2] == (host, pid):   # ours already (in-process
                    return cls(path)                              # runs, e.g. an ensemble)
                if held is None or not is_stale(held[0], held[1]):
                    raise ExpectedError(cls._refusal(run_dir, held)) from None
                report(f"note: {run_dir}: taking over the lock of job {held[1]} on {held[0]}, "
                       f"which is no longer running")
                path.unlink(missing_ok=True)
                continue
            except OSError as err:
                raise ExpectedError(f"{path}: cannot create the run folder's lock "
                                    f"({err.strerror or err}); check run.dir") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{host} {pid} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
            return cls(path)
        raise ExpectedError(cls._refusal(run_dir, read_owner(path)))

    @staticmethod
    def _refusal(run_dir: Path, held) -> str:
        if held is None:
            return (f"{run_dir}: in use by another job (its lock file {run_dir / LOCK_NAME} is "
                    f"being written); choose another run.name")
        host, pid, started = held
        return (f"{run_dir}: in use by job {pid} on {host} (since {started}); wait for it, "
                f"choose another run.name, or delete {run_dir / LOCK_NAME} if that job is gone")

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        held = read_owner(self.path)
        if held is not None and held[:2] == owner():
            self.path.unlink(missing_ok=True)


def _main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m dist.runlock RUN_DIR", file=sys.stderr)
        return 2
    held = read_owner(Path(argv[0]) / LOCK_NAME)
    if held is None:
        print(f"{argv[0]}: not locked")
        return 0
    host, pid, started = held
    state = ("alive" if process_alive(pid) else "dead: stale") if host == owner()[0] \
        else "on another host: cannot tell"
    print(f"{argv[0]}: locked by pid {pid} on {host} since {started} ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
