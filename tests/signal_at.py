"""`python -m dist.train` that sends itself a stop signal at a named moment, for
tests/test_dist_signal_moments.py: a signal at an exact point of the job, every time.

    [mpirun -n N] python tests/signal_at.py MOMENT SIGNAL TARGET [dist.train arguments]

MOMENT  where the signal is sent, by the rank that gets there (rank 0 for all but `import`):
        import          while mpi4py (MPI's start) is being imported, on every rank
        startup         when rank 0 prepares the data file
        evaluate:N      at the start of rank 0's N-th evaluation (validation or test)
        checkpoint:N    as the N-th checkpoint file is being written (before its rename)
        final-test      when rank 0 opens best.h5 for the final test evaluation
        final-json      when rank 0 writes final.json
SIGNAL  TERM, INT or USR1
TARGET  self (the rank that got there) or mpirun (the launcher, which forwards it to every
        rank, as Slurm and a user's Ctrl-C do); mpirun falls back to self without a launcher.

Training runs as ``python -m dist.train`` would (runpy, as __main__), with the product's
functions wrapped from outside: nothing in mpigrad knows about this script.
"""
import importlib.abc
import os
import runpy
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

moment, signame, target, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
where, _, count = moment.partition(":")
SIG = getattr(signal, f"SIG{signame}")


def launcher_pid() -> int:
    """mpirun's pid (the parent of this rank's hydra proxy / prted), or this process's."""
    pid = os.getpid()
    for _ in range(3):
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        if name.startswith(("mpiexec", "mpirun", "prterun")):
            return pid
    return os.getpid()


def send() -> None:
    os.kill(launcher_pid() if target == "mpirun" else os.getpid(), SIG)


def at_call(n: int, fn):
    """``fn`` that signals at its n-th call, then does its work."""
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            send()
        return fn(*args, **kwargs)
    return wrapper


class SignalOnImport(importlib.abc.MetaPathFinder):
    """Signals when ``mpi4py.MPI`` is first imported, then lets the import go on."""

    def find_spec(self, name, path=None, target=None):
        if name == "mpi4py.MPI":
            sys.meta_path.remove(self)
            send()
        return None


if where == "import":
    sys.meta_path.insert(0, SignalOnImport())
elif where == "startup":
    import data.prepare
    data.prepare.ensure_dataset = at_call(1, data.prepare.ensure_dataset)
elif where == "evaluate":
    import dist.evaluate
    dist.evaluate.evaluate = at_call(int(count), dist.evaluate.evaluate)
elif where == "checkpoint":
    import dist.checkpoint
    real_write = dist.checkpoint._write_hdf5
    dist.checkpoint._write_hdf5 = at_call(int(count), real_write)
elif where == "final-test":
    import dist.evaluate
    dist.evaluate.model_from_checkpoint = at_call(1, dist.evaluate.model_from_checkpoint)
elif where == "final-json":
    import dist.rundir
    real_whole = dist.rundir.write_whole

    def write_whole(path, text, kept):
        if Path(path).name == "final.json":
            send()
        return real_whole(path, text, kept)
    dist.rundir.write_whole = write_whole
else:
    sys.exit(f"unknown moment {moment}")

sys.argv = ["dist.train", *argv]
runpy.run_module("dist.train", run_name="__main__", alter_sys=True)
