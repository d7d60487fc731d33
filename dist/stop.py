"""Graceful stop: SIGTERM, SIGINT or SIGUSR1 to mpirun or to any rank ends the job at the next
step boundary with a checkpoint of that exact step, instead of losing the work since the last.

    stop = GracefulStop(comm)          # installs the handlers (every rank)
    for step ...:
        ...one training step...
        if stop.agreed():              # collective: the same answer on every rank
            ...checkpoint this step, print how to continue, exit with stop.exit_code...
    stop.close()                       # collective, before the communicator goes

Who sends what: Slurm sends SIGTERM to every task on preemption, ``scancel`` and at the time
limit (``--signal=USR1@120`` asks for SIGUSR1 two minutes earlier); MPICH's ``mpirun``
(Hydra) forwards SIGINT, SIGTERM and SIGUSR1 to every rank; a user may signal one rank. The
handler only records the signal, so a rank in the middle of a GEMM or an MPI call finishes it
first.

Agreement costs ~nothing per step: each step boundary completes the 4-byte non-blocking
allreduce (MAX) started at the previous boundary -- long done by then -- and starts the next
with this rank's flag. So every rank learns of a signal one step after it arrived, all at
the same step, whichever rank it reached.

A second signal while stopping means "now": it raises KeyboardInterrupt, whose handler in
dist/collective.py (run_main) removes MPI's /dev/shm file and aborts the job (exit 130). A
second Ctrl-C to ``mpirun`` itself makes Hydra kill the ranks at once ("Press Ctrl-C again to
force abort"); nothing of ours can run then: ``python -m dist.shm`` cleans up after it.

Exit status of a stopped job: 128 + the signal number, as a shell reports a death by that
signal (SIGINT 130, SIGUSR1 138, SIGTERM 143), after the checkpoint is safely on disk.

Outside the steps, a signal is not lost either:

* during the imports (MPI starts in one): ``hold_signals()``, the first thing
  ``python -m dist.train`` does, records it, and GracefulStop takes it over: the job stops
  at its first step boundary;
* during the last epoch's validation or checkpoint, where no step boundary follows:
  ``settle()`` after the loop agrees on it, and the job ends without the test evaluation;
* during the final test evaluation and final.json: rank 0 runs them ``interruptible``: the
  signal ends them at once, and final.json is either whole or absent (``--resume RUN`` then
  writes it; training is complete).
"""
from __future__ import annotations

import atexit
import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # not imported at run time: hold_signals runs before MPI starts
    from dist.comm import Comm

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

# hold_signals(): the stop signal received before GracefulStop exists, and the handlers it
# replaced (those GracefulStop restores when it closes).
_held = {"signum": 0, "previous": None}


def hold_signals() -> None:
    """Record a stop signal that arrives before the job can stop gracefully (imports, MPI
    start-up), for GracefulStop to act on. A second one ends the process by that signal."""
    def record(signum, frame):
        if _held["signum"]:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        _held["signum"] = signum
    _held["previous"] = {s: signal.signal(s, record) for s in STOP_SIGNALS}


class Interrupted(BaseException):
    """Raised by the stop handler inside ``GracefulStop.interruptible`` (not an Exception,
    so that no ``except Exception`` on the way swallows it)."""


class GracefulStop:
    def __init__(self, comm: Comm):
        import numpy as np   # here, not at the top: hold_signals must not wait for numpy

        self.comm = comm
        self.signum = _held["signum"]                    # the first stop signal received
        self._mine = np.zeros(1, np.int32)               # sent: this rank's signal
        self._agreed = np.zeros(1, np.int32)             # received: the largest over ranks
        self._request = None
        self._interrupt = False                          # inside interruptible()
        previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        self._previous = _held["previous"] or previous
        _held.update(signum=0, previous=None)
        # A user error that ends every rank mid-epoch leaves an allreduce in flight; MPI must
        # not finalize with it (MPICH complains in two extra lines): complete it at exit.
        atexit.register(self.close)

    def _handler(self, signum, frame) -> None:
        if self.signum and not self._interrupt:   # a second signal: stop waiting for the
            raise KeyboardInterrupt                    # step boundary
        self.signum = self.signum or signum
        if self._interrupt:
            self._interrupt = False                    # raised once
            raise Interrupted

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def agreed(self) -> bool:
        """Collective, at every step boundary: True on every rank (and ``signum`` set on every
        rank) once any rank has received a stop signal."""
        if self.comm.size == 1:
            return bool(self.signum)
        if self._request is not None:
            self.comm.wait(self._request)                # started a step ago: done already
            self._request = None
            if self._agreed[0]:
                self.signum = int(self._agreed[0])
                return True
        self._mine[0] = self.signum
        self._request = self.comm.start_allreduce_max(self._mine, self._agreed)
        return False

    def settle(self) -> bool:
        """Collective, once no step boundary follows (after the last epoch): True on every rank
        (``signum`` set) if any rank has received a stop signal."""
        if self._request is not None:
            self.comm.wait(self._request)
            self._request = None
            if self._agreed[0]:
                self.signum = int(self._agreed[0])
                return True
        if self.comm.size > 1:
            self._mine[0] = self.signum
            self.comm.wait(self.comm.start_allreduce_max(self._mine, self._agreed))
            self.signum = int(self._agreed[0])
        return bool(self.signum)

    def interruptible(self, fn, *args, **kwargs) -> bool:
        """Run ``fn`` (rank 0's final test evaluation and final.json) so that a stop signal
        ends it at once rather than at a step boundary. Returns True if a stop signal came
        before or during it (``fn`` then did not finish)."""
        if self.signum:
            return True
        self._interrupt = True
        try:
            fn(*args, **kwargs)
            self._interrupt = False
        except Interrupted:
            return True
        except BaseException:
            self._interrupt = False
            raise
        return False

    def close(self) -> None:
        """Complete the allreduce in flight (collective) and restore the previous handlers."""
        if self._request is not None:
            self.comm.wait(self._request)
            self._request = None
        for s, handler in self._previous.items():
            signal.signal(s, handler)
