"""The communicator: the only module in mpigrad that talks MPI.

A thin wrapper over mpi4py in the spirit of ChainerMN's communicators:

* ``rank``, ``size`` and ``local_size`` (ranks on this node);
* ``allreduce_sum_(buf)`` sums one flat numpy buffer over all ranks *in place*
  (``MPI.IN_PLACE``, the buffer protocol: no pickling of arrays);
* ``partition``, ``reduce_scatter_sum`` and ``allgather_``: the two halves of an allreduce,
  for the update that each rank does on its own slice of the parameters (dist/update.py);
* ``iallreduce_sum_``, ``test_all``, ``wait_all``: a sum started during backward, polled
  between layers and completed after it (the overlapped update);
* ``node()`` and ``across_nodes()``: the ranks of this host, and one rank of every host (the
  hierarchical update);
* ``shared_vectors(n)``: when every rank is on one node, one MPI shared-memory window in which
  each rank owns n floats that all the others can read -- the same two halves done with plain
  numpy reads and two barriers per step, instead of MPI's message handshakes;
* ``bcast(obj)``, ``allgather(obj)``, ``send``/``recv`` for small Python objects (configs, run
  names, messages, the timeline's clock ping-pong);
* ``wait_for_root()`` and ``any_true(flag)``: the ranks that wait while rank 0 evaluates and
  writes checkpoints poll a non-blocking barrier (or sum) with short sleeps instead of spinning
  a core inside a blocking call (MPICH busy-polls), which matters when ranks outnumber cores.

Two neighbours use it: dist/cores.py decides how the node's cores are shared among its ranks
(``comm.cores``: threads per rank, and whether ranks outnumber cores, in which case every
collective here polls and yields instead of blocking), and dist/collective.py makes the ranks
agree on a user error so that it ends every rank with one line (``agree``, ``collectively``,
``on_root``, ``run_main``).

Without ``mpirun`` everything works with ``size == 1`` and the collectives are no-ops.

Any *unhandled* exception on any rank calls ``MPI.COMM_WORLD.Abort`` from ``sys.excepthook``
(as ``python -m mpi4py`` does), so the whole job ends within seconds instead of hanging.

Try it:  mpirun -n 2 python -m dist.comm
"""
from __future__ import annotations

import os
import sys
import time
import traceback

import numpy as np

# MPI reads the environment when it starts, i.e. at the import of mpi4py.MPI below, so two
# defaults are set first (a value the user sets wins; each library ignores the other's):
# * Open MPI (the `openmpi` extra): without UCX hardware, its UCX one-sided component fails its
#   query and every rank prints "OSC UCX component priority set inside component query
#   failed". mpigrad's only one-sided use is the shared-memory window of one node
#   (shared_vectors), which Open MPI's `sm` component serves, so the UCX one is left out.
# * MPICH: its default all-gather for large vectors is a ring that sends in 32 kB chunks, each
#   waiting for the one before, so over a link with latency it takes several times the wire
#   time; recursive doubling sends each rank's part in one message per round (measured between
#   fake hosts: launch/docs/benchmarks.md).
MPI_DEFAULTS = {"OMPI_MCA_osc": "^ucx",
                "MPIR_CVAR_ALLGATHERV_INTRA_ALGORITHM": "recursive_doubling"}
for _key, _value in MPI_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

from mpi4py import MPI  # noqa: E402  (starts MPI: after the defaults above)

from dist.cores import CoreShare, my_cores, share_cores
from dist.shm import unlink_mapped


# Waiting on a non-blocking request: first spin briefly (a balanced allreduce of a small model
# completes within microseconds, and MPICH only makes progress while we poll), then sleep this
# long between polls, which gives the core to a rank that still computes when ranks outnumber
# cores, and costs a waiting rank nothing while rank 0 evaluates.
SPIN_SECONDS = 5e-4
POLL_SECONDS = 2e-4

# The MPI datatype of a numpy float array, for the collectives that need it spelled out.
MPI_FLOAT_TYPES = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}


class Comm:
    def __init__(self, world: MPI.Comm | None = None, cores: CoreShare | None = None):
        self.world = world if world is not None else MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        # The ranks sharing this node, and so its memory and its cores.
        node = self.world.Split_type(MPI.COMM_TYPE_SHARED) if self.size > 1 else None
        self.local_rank = node.Get_rank() if node is not None else 0
        self.local_size = node.Get_size() if node is not None else 1
        # How the node's cores are shared (dist/cores.py), from every rank's CPU affinity; a
        # sub-communicator is handed the job's share, since its ranks still share the node.
        if cores is None:
            mine = my_cores()
            cores = share_cores(mine, node.allgather(mine) if node is not None else [mine])
        self.cores = cores
        if node is not None:
            node.Free()

    def split(self, color: int) -> "Comm":
        """The sub-communicator of the ranks that pass the same ``color`` (ensemble groups),
        with the whole job's share of the cores (dist/cores.py)."""
        return Comm(self.world.Split(color=color, key=self.rank), self.cores)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- collectives ------------------------------------------------------------------------
    def _wait(self, request: MPI.Request) -> None:
        """Complete a non-blocking request without burning a core (see module docstring)."""
        spin_until = time.perf_counter() + SPIN_SECONDS
        while not request.Test():
            if time.perf_counter() > spin_until:
                time.sleep(POLL_SECONDS)

    def allreduce_sum_(self, buf: np.ndarray) -> np.ndarray:
        """Sum a contiguous numpy array over all ranks, in place. Returns ``buf``.

        With a core per rank the blocking call is fastest (MPICH progresses a large message
        without waiting for our polls). With more ranks than cores, a blocking call would spin
        on a core another rank needs for its forward pass, so we poll and yield instead."""
        if self.size == 1:
            return buf
        if self.cores.oversubscribed:
            self._yield_until_done(self.world.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM))
        else:
            self.world.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf

    @staticmethod
    def _yield_until_done(request: MPI.Request) -> None:
        """Each round of a collective needs every rank to poll; yielding (instead of sleeping)
        lets a rank that still computes have the core, yet answers at once.  (Sleeping instead
        delays every round of the collective: launch/docs/benchmarks.md has the measurement.)"""
        while not request.Test():
            os.sched_yield()

    @property
    def single_node(self) -> bool:
        """All ranks of this communicator share one node (and so can share memory)."""
        return self.size > 1 and self.local_size == self.size

    def barrier(self) -> None:
        """A barrier that yields the core while it waits when ranks outnumber cores."""
        if self.size == 1:
            return
        if self.cores.oversubscribed:
            self._yield_until_done(self.world.Ibarrier())
        else:
            self.world.Barrier()

    def shared_vectors(self, n: int, dtype=np.float32) -> "SharedVectors":
        """n elements per rank in one node-local shared-memory window (collective; needs
        ``single_node``). See SharedVectors."""
        return SharedVectors(self, n, dtype)

    # -- the sharded update (dist/update.py): reduce-scatter, update a slice, all-gather ------
    def partition(self, n: int, align: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Split a flat vector of n elements into one contiguous slice per rank: rank r owns
        ``displs[r] : displs[r] + counts[r]``. Slices are multiples of ``align`` elements
        (64 bytes of float32: no two ranks write the same cache line), the last takes the rest."""
        per_rank = -(-n // self.size)                    # ceil(n / size) ...
        per_rank = -(-per_rank // align) * align         # ... rounded up to the alignment
        displs = np.minimum(np.arange(self.size) * per_rank, n)
        counts = np.diff(np.append(displs, n))
        return counts.astype(np.int64), displs.astype(np.int64)

    def reduce_scatter_sum(self, buf: np.ndarray, out: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Sum ``buf`` over all ranks, but deliver to rank r only its slice (``counts[r]``
        elements, in ``partition`` order) in ``out``. Half of what an allreduce moves."""
        if self.size == 1:
            out[...] = buf
            return out
        if self.cores.oversubscribed:
            self._yield_until_done(self.world.Ireduce_scatter(buf, out, counts, op=MPI.SUM))
        else:
            self.world.Reduce_scatter(buf, out, counts, op=MPI.SUM)
        return out

    def allgather_(self, buf: np.ndarray, counts: np.ndarray, displs: np.ndarray) -> np.ndarray:
        """In place: every rank contributes its slice of ``buf`` (``partition`` order) and
        receives everybody else's, so ``buf`` ends up whole and identical on every rank."""
        if self.size == 1:
            return buf
        spec = [buf, counts, displs, MPI_FLOAT_TYPES[buf.dtype]]
        if self.cores.oversubscribed:
            self._yield_until_done(self.world.Iallgatherv(MPI.IN_PLACE, spec))
        else:
            self.world.Allgatherv(MPI.IN_PLACE, spec)
        return buf

    # -- a sum started now and finished later (overlapped with backward) ---------------------
    def iallreduce_sum_(self, buf: np.ndarray):
        """``allreduce_sum_`` started in the background; returns a request for ``wait_all``.
        MPICH moves it on only while the rank is inside MPI: poll it with ``test_all``."""
        if self.size == 1:
            return MPI.REQUEST_NULL
        return self.world.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    @staticmethod
    def test_all(requests: list) -> bool:
        """Poll: let MPI move the requests on (MPICH progresses them only inside MPI calls);
        True when all have completed."""
        return bool(MPI.Request.Testall(requests)) if requests else True

    @staticmethod
    def test(request) -> bool:
        """Poll one request: True once it has completed (dist/timeline.py watches buckets so)."""
        return bool(request.Test())

    def wait_all(self, requests: list) -> None:
        """Complete the requests (yielding the core meanwhile when ranks outnumber cores)."""
        if not requests:
            return
        if self.cores.oversubscribed:
            while not MPI.Request.Testall(requests):
                os.sched_yield()
        else:
            MPI.Request.Waitall(requests)

    # -- several ranks per host: the ranks of this node, and one rank of every node ----------
    def node(self) -> "Comm":
        """The ranks on this node (they can share memory), in rank order."""
        return Comm(self.world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank), self.cores)

    def across_nodes(self) -> "Comm":
        """The ranks with this rank's node-local rank, one per node, in rank order."""
        return Comm(self.world.Split(color=self.local_rank, key=self.rank), self.cores)

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        """Out-of-place sum of a small array (batch-norm statistics, epoch totals)."""
        out = np.ascontiguousarray(array).copy()
        return self.allreduce_sum_(out)

    def bcast(self, obj, root: int = 0):
        """Broadcast a small picklable Python object (a config dict, a run name)."""
        return self.world.bcast(obj, root=root) if self.size > 1 else obj

    def bcast_array_(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Broadcast a numpy array in place (e.g. theta after rank 0 loaded a checkpoint)."""
        if self.size > 1:
            self._wait(self.world.Ibcast(buf, root=root))
        return buf

    def wait_for_root(self) -> None:
        """A barrier that sleeps instead of spinning: rank 0 enters it when its work is done."""
        if self.size > 1:
            self._wait(self.world.Ibarrier())

    def any_true(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank. Ranks often wait here while rank 0 evaluates
        or writes a checkpoint (dist/collective.py, ``on_root``): they sleep between polls, so
        that they leave rank 0 every core."""
        if self.size == 1:
            return flag
        flags = np.array([1 if flag else 0], dtype=np.int32)
        self._wait(self.world.Iallreduce(MPI.IN_PLACE, flags, op=MPI.SUM))
        return bool(flags[0])

    def gather(self, obj) -> list | None:
        """Every rank's small Python object, as a list on rank 0 (None elsewhere)."""
        return self.world.gather(obj, root=0) if self.size > 1 else [obj]

    def allgather(self, obj) -> list:
        """Every rank's small Python object, as a list on every rank."""
        return self.world.allgather(obj) if self.size > 1 else [obj]

    def send(self, obj, dest: int) -> None:
        """A small Python object to one rank (dist/timeline.py's clock ping-pong)."""
        self.world.send(obj, dest=dest)

    def recv(self, source: int):
        """A small Python object from one rank."""
        return self.world.recv(source=source)

    def start_allreduce_max(self, send: np.ndarray, recv: np.ndarray) -> MPI.Request:
        """Start a non-blocking elementwise max of ``send`` into ``recv`` over all ranks
        (dist/stop.py: the stop flag). Leave both buffers alone until ``wait``."""
        return self.world.Iallreduce(send, recv, op=MPI.MAX)

    def wait(self, request: MPI.Request) -> None:
        """Complete a request from ``start_allreduce_max`` (without spinning a core)."""
        self._wait(request)

    def abort(self, code: int = 1) -> None:
        self.world.Abort(code)


class SharedVectors:
    """One MPI-3 shared-memory window on a node: rank q owns ``vectors[q]`` (n elements), and
    every rank of the node can read (and write) every rank's vector with plain numpy.

    Each rank writes only its own vector between two ``sync()`` calls, and reads the others'
    only after the next ``sync()``: that barrier (with the window's memory synchronised on
    both sides of it, ``Win.Sync``) is the only coordination, so a collective costs two
    barriers and the copies, not MPI's chunk-by-chunk handshakes between every pair of ranks
    -- which, when ranks outnumber cores, wait for a descheduled peer at every chunk.

        vecs = comm.shared_vectors(1000)
        vecs.mine[...] = my_data           # write my vector
        vecs.sync()                        # every rank's writes are now visible
        total = sum(v[:10] for v in vecs.vectors)
        vecs.free()                        # collective, before MPI finalizes
    """

    def __init__(self, comm: Comm, n: int, dtype=np.float32):
        if not comm.single_node:
            raise ValueError("SharedVectors: the ranks are not all on one node")
        self.comm, dtype = comm, np.dtype(dtype)
        self.win = MPI.Win.Allocate_shared(n * dtype.itemsize, dtype.itemsize, comm=comm.world)
        self.vectors = []
        for q in range(comm.size):
            memory, _ = self.win.Shared_query(q)
            self.vectors.append(np.frombuffer(memory, dtype=dtype, count=n))
        self.mine = self.vectors[comm.rank]
        # One passive-target epoch for the window's whole life: Win.Sync is only valid inside
        # one, and it is what makes stores visible across processes in MPI's memory model.
        self.win.Lock_all(MPI.MODE_NOCHECK)

    def sync(self) -> None:
        self.win.Sync()
        self.comm.barrier()
        self.win.Sync()

    def free(self) -> None:
        if self.win is not None:
            self.win.Unlock_all()
            self.win.Free()
            self.win, self.vectors, self.mine = None, [], None


def install_abort_hook(comm: Comm) -> None:
    """Make an unhandled exception on any rank end the whole job (never a hang)."""
    if comm.size == 1:
        return

    def hook(exc_type, exc, tb):
        sys.stderr.write(f"[rank {comm.rank}] unhandled exception, aborting the MPI job:\n")
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        sys.stderr.flush()
        unlink_mapped()   # MPI_Abort skips MPI_Finalize, which would remove MPICH's /dev/shm file
        comm.abort(1)

    sys.excepthook = hook


def _demo() -> None:
    comm = Comm()
    buf = np.full(4, comm.rank, dtype=np.float32)
    comm.allreduce_sum_(buf)
    print(f"rank {comm.rank}/{comm.size} (node-local {comm.local_rank}/{comm.local_size}, "
          f"pid {os.getpid()}): allreduce of ranks = {buf}")


if __name__ == "__main__":
    _demo()
