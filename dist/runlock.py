"""One job per run folder: a lock file naming the host and process that own the folder.

    lock = RunLock.acquire(Path("runs/cnn-1"))   # rank 0, before it writes anything there
    ...
    lock.release()                               # at exit (also after an error or a stop)

The lock is ``runs/<name>/lock``, created with O_CREAT|O_EXCL (atomic, also on NFS), holding
``host pid start-time``. A second job that finds it is refused with one line naming the owner.
A lock whose process is dead on this host (the job was SIGKILLed, the node rebooted) is stale:
it is taken over with a note. A lock of another host cannot be checked from here; if that job
is gone, delete the file (the message says so). ``cat runs/<name>/lock`` shows the owner.
A lock that cannot be read (empty, garbage, a folder, a dangling link, no valid pid) is
refused the same way, in one line naming it and how to recover; a failed first write (a full
disk) removes the lock it created, so it never leaves an empty one behind.

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


# What a pid can be: os.kill refuses anything larger (OverflowError), and no kernel hands
# out pids above 2**22 today, so a larger number is not a pid someone wrote.
MAX_PID = 2 ** 31 - 1


def read_owner(path: Path) -> tuple[str, int, str] | None:
    """(host, pid, started) recorded in a lock file, or None if it is not one (empty,
    garbage, binary, a folder, a dangling link, a pid out of range)."""
    try:
        host, pid, started = path.read_text().split(maxsplit=2)
        if not 0 < int(pid) <= MAX_PID:
            return None
        return host, int(pid), started.strip()
    except (OSError, ValueError):   # ValueError covers UnicodeDecodeError (binary)
        return None


def _read_settled(path: Path) -> tuple[str, int, str] | None:
    """read_owner, allowing a job that has just created the file the moment to write its one
    line (O_EXCL creates it empty; the write follows within microseconds)."""
    for _ in range(10):
        held = read_owner(path)
        if held is not None or not path.is_file() or path.stat().st_size > 0:
            return held
        time.sleep(0.05)
    return read_owner(path)


class RunLock:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def acquire(cls, run_dir: Path, report=print) -> "RunLock":
        """Take ``run_dir``'s lock (creating the folder) or raise ExpectedError."""
        run_dir = Path(run_dir)
        made = not run_dir.exists()
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
                held = _read_settled(path)
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
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(f"{host} {pid} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
            except OSError as err:   # a full disk: an empty lock would refuse every later job
                path.unlink(missing_ok=True)
                if made:
                    run_dir.rmdir()
                raise ExpectedError(f"{path}: cannot write the run folder's lock "
                                    f"({err.strerror or err}); nothing written, free space and "
                                    f"start again") from None
            return cls(path)
        raise ExpectedError(cls._refusal(run_dir, read_owner(path)))

    @staticmethod
    def _refusal(run_dir: Path, held) -> str:
        path = run_dir / LOCK_NAME
        if held is None:
            return (f"{path}: lock file cannot be read ({_what_is_wrong(path)}); if no job is "
                    f"using {run_dir}, delete it (rm -r {path}) and start again")
        host, pid, started = held
        return (f"{run_dir}: in use by job {pid} on {host} (since {started}); wait for it, "
                f"choose another run.name, or delete {path} if that job is gone")

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        held = read_owner(self.path)
        if held is not None and held[:2] == owner():
            self.path.unlink(missing_ok=True)


def _what_is_wrong(path: Path) -> str:
    """Why read_owner found no owner in an existing lock path, in a few words."""
    if path.is_symlink() and not path.exists():
        return "a link to nothing"
    if path.is_dir():
        return "a folder"
    try:
        data = path.read_bytes()
    except OSError as err:
        return err.strerror or str(err)
    if not data:
        return "empty"
    return f"not 'host pid start-time': {data[:40]!r}"


def _main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m dist.runlock RUN_DIR", file=sys.stderr)
        return 2
    path = Path(argv[0]) / LOCK_NAME
    held = read_owner(path)
    if held is None and (path.exists() or path.is_symlink()):
        print(f"{path}: lock file cannot be read ({_what_is_wrong(path)}); if no job is using "
              f"{argv[0]}, delete it (rm -r {path})")
        return 1
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
