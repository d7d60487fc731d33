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
(Hydra) forwards SIGINT, SIGTERM and SIGUSR1 to every rank; a user may signal one rank. The handler only records the signal, so a
rank in the middle of a GEMM or an MPI call finishes it first.

Agreement costs ~nothing per step: each step boundary completes the 4-byte non-blocking
allreduce (MAX) started at the previous boundary -- long done by then -- and starts the next
with this rank's flag. So every rank learns of a signal one step after it arrived, all at
the same step, whichever rank it reached.

A second signal while stopping means "now": it raises KeyboardInterrupt, whose handler in
dist/collective.py (run_main) removes MPI's /dev/shm file and aborts the job (exit 130). A second
Ctrl-C to ``mpirun`` itself makes Hydra kill the ranks at once ("Press Ctrl-C again to force
abort"); nothing of ours can run then: ``python -m dist.shm`` cleans up after it.

Exit status of a stopped job: 128 + the signal number, as a shell reports a death by that
signal (SIGINT 130, SIGUSR1 138, SIGTERM 143), after the checkpoint is safely on disk.
"""
from __future__ import annotations

import atexit
import signal

import numpy as np

from dist.comm import Comm

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class GracefulStop:
    def __init__(self, comm: Comm):
        self.comm = comm
        self.signum = 0                                  # the first stop signal received
        self._mine = np.zeros(1, np.int32)               # sent: this rank's signal
        self._agreed = np.zeros(1, np.int32)             # received: the largest over ranks
        self._request = None
        self._previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        # A user error that ends every rank mid-epoch leaves an allreduce in flight; MPI must
        # not finalize with it (MPICH complains in two extra lines): complete it at exit.
        atexit.register(self.close)

    def _handler(self, signum, frame) -> None:
        if self.signum:   # a second signal: stop waiting for the step boundary
            raise KeyboardInterrupt
        self.signum = signum

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

    def close(self) -> None:
        """Complete the allreduce in flight (collective) and restore the previous handlers."""
        if self._request is not None:
            self.comm.wait(self._request)
            self._request = None
        for s, handler in self._previous.items():
            signal.signal(s, handler)
