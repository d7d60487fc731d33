"""The synchronous SGD update: the gradient summed over ranks, then one optimizer step.

Every rank must end the step with the same new theta. Five ways, one small class each, behind
one constructor (``make_update``) that picks by topology:

``AllreduceUpdate`` -- the baseline a reader understands first. Allreduce the gradient (every
rank gets the sum), then every rank runs the same optimizer over all P parameters: n copies of
the same work.

``ShardedUpdate`` -- the same sums with the optimizer's work split (ZeRO stage 1,
Rajbhandari et al. 2020), in three steps:

    reduce-scatter   rank r receives the summed gradient of its own slice theta[lo_r:hi_r]
    optimizer        rank r updates that slice (P/n parameters) and its slice of velocity
    all-gather       every rank receives the other ranks' updated slices: theta is whole again

An allreduce of a large buffer *is* a reduce-scatter followed by an all-gather (that is how
MPICH and ring allreduces do it), so the bytes moved are the same; what goes away is (n-1)/n
of the optimizer's passes over memory (for the mlp preset a quarter of a step).

``SharedMemoryUpdate`` -- the sharded update when every rank is on one node: the two halves go
through one MPI shared-memory window (``Comm.shared_vectors``) instead of MPI's messages. Each
rank copies its gradient into its own part of the window; after a barrier it sums its slice
straight out of everybody's parts, in rank order (so the sum does not depend on timing); after
the step it publishes its updated slice the same way and copies the others' after a second
barrier. Two barriers and the copies, not MPI's chunk-by-chunk handshakes.

Across hosts the network is the cost, and two more ways cut it:

``OverlappedUpdate`` -- the allreduce update, sent while backward still runs (PyTorch DDP's
buckets, Li et al. 2020). Backward computes the last layer's gradient first, and the last
layer's parameters sit at the end of the arena, so the arena is cut from its end into buckets
of whole layers of about ``comm.bucket_mb`` each (the arena's layout, and so the checkpoints,
stay as they are):

    theta:  [ layer 1 | layer 2 | layer 3 | ... | layer L-1 | layer L ]
    buckets: <----- bucket 2 -----><---- bucket 1 ----><--- bucket 0 --->

``model.backward(dout, grad_ready=update.grad_ready)`` calls back after every layer; once a
bucket's gradient is complete, its allreduce starts (non-blocking) and backward goes on with
the layers before it; ``reduce_gradient`` waits only for what is still in flight. MPICH moves
a non-blocking collective on only inside an MPI call, so ``grad_ready`` also polls the buckets
in flight between layers (a polling thread, or MPICH_ASYNC_PROGRESS=1, cost more compute than
they hid on a 2-core machine: launch/lab/scaling.py). Why an allreduce per bucket and not the
sharded halves: the all-gather of a sharded step carries the *new* theta, which exists only
after the step, so it could not hide behind backward; an allreduce moves the same bytes (its
reduce-scatter and all-gather inside), all of them during backward. The price is the
optimizer over every parameter on every rank, as in the plain update. Each bucket is summed
by the same MPI algorithm at every step (fixed order: resume is exact); against the
one-piece allreduce the sums agree within float rounding (bitwise with 4 ranks, measured).

``HierarchicalUpdate`` -- several ranks on each host (Horovod's hierarchical allreduce, NCCL's
rings per local rank). With L ranks on each of H hosts, the flat reduce-scatter sends every
rank's share through the host's link; here it goes in three hops:

    within the host   the L ranks sum their gradients through shared memory; local rank l
                      gets the host's sum of slice l (of L slices of the arena)
    across hosts      the H ranks with local rank l reduce-scatter slice l over MPI: each owns
                      1/H of it, summed over all ranks, steps it, and all-gathers slice l
    within the host   each local rank publishes its new slice l; the others copy it

so a host sends one gradient's worth, spread over its L ranks, not L of them. The sums run
in local-rank order inside the host, then in MPI's order across hosts: against the flat
update they agree within float rounding (not bitwise in general). It needs the same number
of ranks on every host (else the flat sharded update is used).

The sums are the plain allreduce's up to float summation order, and the update of an element
does not depend on which rank computes it, so the world-size invariance holds. With sharding,
each rank's velocity is current on its own slice only: ``gather_velocity()`` makes it whole
on every rank before a checkpoint; a resumed run hands every rank the whole vector.

    update = make_update(comm, model.theta, model.grad, opt)     # or kind="allreduce", ...
    model.backward(dout, grad_ready=update.grad_ready)   # this rank's gradient, in model.grad
    update.reduce_gradient()          # the summed gradient (of this rank's slice)
    update.step(lr)                   # SGD on this rank's slice of theta (all of it: plain)
    update.gather_parameters()        # theta whole again, the same on every rank
    update.finite()                   # False if the step produced inf/NaN (same on all ranks)
    update.gather_velocity()          # before writing a checkpoint
    update.gather(ema.theta)          # any vector kept slice by slice (core/ema.py)
    update.close()                    # collective: frees the shared-memory window

Tested by tests/test_dist_invariance.py (n ranks against 1, bitwise resume),
tests/comm_probe.py (every kind gives the same theta), tests/test_dist_overlap.py (overlapped
against allreduce and 1 rank, resume) and tests/test_launch_multihost.py (hierarchical against
flat on 2 hosts x 2 ranks); launch.lab.bench times them side by side, launch.lab.scaling
across hosts.
"""
from __future__ import annotations

import numpy as np

from core.optim import SGD
from core.replicas import run_threads
from dist.comm import Comm

def sum_slice(shared, sl: slice, out: np.ndarray) -> None:
    """out = the sum over the window's ranks of their vector's slice ``sl``, in rank order
    (the same sum every time, whatever the timing)."""
    first, *others = shared.vectors
    np.copyto(out, first[sl])
    for other in others:
        out += other[sl]


def copy_published_slices(shared, me: int, theta: np.ndarray, counts, displs) -> None:
    """Each other rank q published its updated slice of theta at the end of its vector
    (after the gradient's P floats): copy it into place. theta is whole again."""
    p = theta.size
    for rank, other in enumerate(shared.vectors):
        if rank != me:
            lo, n = int(displs[rank]), int(counts[rank])
            theta[lo:lo + n] = other[p:p + n]


class AllreduceUpdate:
    """Allreduce the whole gradient, then every rank updates every parameter."""
    transport = "allreduce"
    shared = None                 # a shared-memory window, for the kinds that use one

    threads = 1                   # a rank's threads (model copies): see step

    def __init__(self, comm: Comm, theta: np.ndarray, grad: np.ndarray, opt: SGD):
        self.comm, self.theta, self.grad, self.opt = comm, theta, grad, opt
        self.lo, self.my_grad = 0, grad               # "my slice" is all of it: (P,)

    def grad_ready(self, p: int) -> None:
        """Backward's callback (``model.backward(dout, grad_ready=...)``): grad[p:] is final.
        Only the overlapped update starts sending then; the others wait for backward's end."""

    def reduce_gradient(self) -> None:
        self.comm.allreduce_sum_(self.grad)

    def step(self, lr: float) -> None:
        """The optimizer on this rank's slice of theta (all of it here). A rank with several
        threads steps its slice as that many ranks would: one part per thread, at once (each
        parameter's arithmetic is the same in any part, so the result is too)."""
        size, n = self.my_grad.size, self.threads
        parts = [(size * k // n, size * (k + 1) // n) for k in range(n)]
        run_threads(lambda k: self.opt.step(self.theta, self.my_grad[parts[k][0]:parts[k][1]],
                                            lr, lo=self.lo + parts[k][0]), n)

    def gather_parameters(self) -> None:
        pass                                          # every rank updated all of theta

    def gather_velocity(self) -> None:
        self.gather(self.opt.velocity)

    def gather(self, vector: np.ndarray) -> None:
        """Make a vector laid out like theta whole on every rank, where each rank kept only its
        own slice current (the velocity; the moving average of the weights). Collective.
        Here every rank updated all of theta, so there is nothing to gather."""

    @property
    def my_slice(self) -> tuple[int, int]:
        """(lo, hi): the part of theta this rank updates."""
        return self.lo, self.lo + self.my_grad.size

    def finite(self) -> bool:
        """Whether theta is still finite after the step. A non-finite gradient anywhere makes
        the updated theta non-finite there (lr * inf or lr * NaN), and every rank holds the
        same theta, so every rank reaches the same verdict without another collective.
        (min and max, not a dot product: NaN and inf carry through them, but huge finite
        weights do not overflow them -- those are for --debug to trace to a layer.)"""
        return bool(np.isfinite(self.theta.min()) and np.isfinite(self.theta.max()))

    def close(self) -> None:
        """Free the shared-memory window, if any (collective: every rank, once, before MPI
        finalizes)."""
        if self.shared is not None:
            self.shared.free()
            self.shared = None


class ShardedUpdate(AllreduceUpdate):
    """Reduce-scatter, the optimizer on this rank's slice, all-gather (MPI's collectives)."""
    transport = "sharded"

    def __init__(self, comm: Comm, theta: np.ndarray, grad: np.ndarray, opt: SGD):
        super().__init__(comm, theta, grad, opt)
        self.counts, self.displs = comm.partition(theta.size)
        self.lo = int(self.displs[comm.rank])
        self.hi = self.lo + int(self.counts[comm.rank])
        self.my_grad = np.empty(self.hi - self.lo, grad.dtype)                  # (P/n,)

    def reduce_gradient(self) -> None:
        self.comm.reduce_scatter_sum(self.grad, self.my_grad, self.counts)

    def gather_parameters(self) -> None:
        self.comm.allgather_(self.theta, self.counts, self.displs)

    def gather(self, vector: np.ndarray) -> None:
        self.comm.allgather_(vector, self.counts, self.displs)


class SharedMemoryUpdate(ShardedUpdate):
    """The sharded update with both halves through one node-local shared-memory window."""
    transport = "shared-memory"

    def __init__(self, comm: Comm, theta: np.ndarray, grad: np.ndarray, opt: SGD):
        super().__init__(comm, theta, grad, opt)
        # Per rank: its whole gradient (P), then its updated slice of theta (P/n).
        self.shared = comm.shared_vectors(theta.size + int(self.counts.max()), theta.dtype)

    def reduce_gradient(self) -> None:
        p = self.grad.size
        self.shared.mine[:p] = self.grad
        self.shared.sync()                              # every rank's gradient is in place
        sum_slice(self.shared, slice(self.lo, self.hi), self.my_grad)

    def gather_parameters(self) -> None:
        p = self.theta.size
        self.shared.mine[p:p + self.hi - self.lo] = self.theta[self.lo:self.hi]
        self.shared.sync()                              # every rank's new slice is in place
        copy_published_slices(self.shared, self.comm.rank, self.theta, self.counts, self.displs)


def bucket_ranges(layer_offsets, size: int, bucket_bytes: float,
                  itemsize: int = 4) -> list[tuple[int, int]]:
    """Cut the arena [0, size) into contiguous (lo, hi) ranges of whole layers, from its end:
    bucket 0 holds the last layers (backward finishes them first). A bucket closes once it
    holds at least ``bucket_bytes``; a layer larger than that is a bucket of its own."""
    starts = sorted({p for p in layer_offsets if p < size} | {0}, reverse=True)
    buckets, hi = [], size
    for lo in starts:
        if (hi - lo) * itemsize >= bucket_bytes or lo == 0:
            buckets.append((lo, hi))
            hi = lo
    return buckets


class OverlappedUpdate(AllreduceUpdate):
    """The allreduce update in buckets, each summed while backward computes the layers before."""
    transport = "overlapped"

    def __init__(self, comm: Comm, theta: np.ndarray, grad: np.ndarray, opt: SGD,
                 layer_offsets=(0,), bucket_bytes: float = 2 ** 19):
        super().__init__(comm, theta, grad, opt)
        self.buckets = bucket_ranges(layer_offsets, theta.size, bucket_bytes, theta.itemsize)
        self.in_flight = []                 # requests of the buckets started this step

    def grad_ready(self, p: int) -> None:
        """Start every bucket that is now complete; poll those in flight (MPICH moves them on
        only inside an MPI call, so this poll between layers is what overlaps them)."""
        while len(self.in_flight) < len(self.buckets) and \
                self.buckets[len(self.in_flight)][0] >= p:
            lo, hi = self.buckets[len(self.in_flight)]
            self.in_flight.append(self.comm.iallreduce_sum_(self.grad[lo:hi]))
        self.comm.test_all(self.in_flight)

    def reduce_gradient(self) -> None:
        """Start what backward did not (all of it, without the callback); wait for the rest."""
        self.grad_ready(0)
        self.comm.wait_all(self.in_flight)
        self.in_flight = []


class HierarchicalUpdate(AllreduceUpdate):
    """The sharded update in three hops: shared memory in the host, MPI across hosts, back."""
    transport = "hierarchical"

    @staticmethod
    def fits(comm: Comm) -> bool:
        """Several hosts with the same number (> 1) of ranks each."""
        return comm.size > comm.local_size > 1 and len(set(comm.allgather(comm.local_size))) == 1

    def __init__(self, comm: Comm, theta: np.ndarray, grad: np.ndarray, opt: SGD):
        super().__init__(comm, theta, grad, opt)
        self.node, self.across = comm.node(), comm.across_nodes()
        p = theta.size
        # Slice l of the arena belongs to local rank l; within it, part h to host h.
        self.host_counts, self.host_displs = self.node.partition(p)
        self.slice = slice(int(self.host_displs[self.node.rank]),
                           int(self.host_displs[self.node.rank] + self.host_counts[self.node.rank]))
        self.counts, self.displs = self.across.partition(self.slice.stop - self.slice.start)
        self.lo = self.slice.start + int(self.displs[self.across.rank])
        self.my_grad = np.empty(int(self.counts[self.across.rank]), grad.dtype)
        self.host_sum = np.empty(self.slice.stop - self.slice.start, grad.dtype)
        # Per local rank: its whole gradient (P), then its slice of the new theta.
        self.shared = self.node.shared_vectors(p + int(self.host_counts.max()), theta.dtype)

    def reduce_gradient(self) -> None:
        self.shared.mine[:self.grad.size] = self.grad
        self.shared.sync()                                  # the host's gradients are in place
        sum_slice(self.shared, self.slice, self.host_sum)   # local-rank order: a fixed sum
        self.across.reduce_scatter_sum(self.host_sum, self.my_grad, self.counts)

    def gather_parameters(self) -> None:
        self.across.allgather_(self.theta[self.slice], self.counts, self.displs)  # slice l
        p, n = self.theta.size, self.slice.stop - self.slice.start
        self.shared.mine[p:p + n] = self.theta[self.slice]
        self.shared.sync()                                  # every local slice is in place
        copy_published_slices(self.shared, self.node.rank, self.theta, self.host_counts,
                              self.host_displs)

    def gather(self, vector: np.ndarray) -> None:
        self.across.allgather_(vector[self.slice], self.counts, self.displs)
        self.node.allgather_(vector, self.host_counts, self.host_displs)


def make_update(comm: Comm, theta: np.ndarray, grad: np.ndarray, opt: SGD,
                kind: str = "auto", layer_offsets=(0,), bucket_mb: float = 0.5,
                overlap: bool = True, hierarchical: bool = True,
                threads: int = 1) -> AllreduceUpdate:
    """The update for this topology: one rank has nothing to reduce (plain); ranks that all
    share a node use the shared-memory window; several hosts with several ranks each sum
    within the host first (``hierarchical``); one rank per host sends buckets during backward
    (``overlap``; ``layer_offsets``: where each layer starts in theta, ``Model.param_offsets``);
    otherwise MPI's reduce-scatter and all-gather. ``kind`` forces one (config ``comm.update``),
    e.g. to compare them. ``threads``: the rank's threads, which share its optimizer step."""
    if kind == "auto":
        kind = "allreduce" if comm.size == 1 else \
            "shared-memory" if comm.single_node else \
            "hierarchical" if hierarchical and HierarchicalUpdate.fits(comm) else \
            "overlapped" if overlap else "sharded"
    if kind == "shared-memory" and not comm.single_node:
        kind = "sharded"              # a window needs every rank on one node
    if kind == "hierarchical" and not HierarchicalUpdate.fits(comm):
        kind = "sharded"              # needs several hosts with the same ranks each
    if comm.size == 1:
        kind = "allreduce"            # nothing to shard: the sums are no-ops
    if kind == "overlapped":
        update = OverlappedUpdate(comm, theta, grad, opt, layer_offsets, bucket_mb * 2 ** 20)
    else:
        cls = {"allreduce": AllreduceUpdate, "sharded": ShardedUpdate,
               "shared-memory": SharedMemoryUpdate, "hierarchical": HierarchicalUpdate}[kind]
        update = cls(comm, theta, grad, opt)
    update.threads = max(1, int(threads))
    return update
