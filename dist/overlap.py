"""Two update transports for many hosts: buckets sent during backward, and a host-aware sum.

Both are the sharded update of dist/update.py (reduce-scatter, each rank steps its slice,
all-gather); what changes is when and along which path the bytes travel.

OverlappedUpdate -- communication hidden behind backward (PyTorch DDP's buckets, Li et al. 2020).
    Backward computes the last layer's gradient first, and the last layer's parameters sit at
    the end of the arena. So the arena is cut, from its end, into buckets of whole layers of
    about ``bucket_bytes`` each:

        theta: [ layer 1 | layer 2 | layer 3 | ... | layer L-1 | layer L ]
                \\____ bucket 2 ____/\\___ bucket 1 ___/\\___ bucket 0 ___/

    ``model.backward(dout, grad_ready=update.grad_ready)`` calls back after every layer; as soon
    as a bucket's gradient is complete, its reduce-scatter starts (non-blocking), and backward
    goes on with the layers before it. ``reduce_gradient()`` then waits only for what is still
    in flight. Each rank owns one slice of every bucket (``Comm.partition`` of the bucket), so
    the optimizer and the all-gather work bucket by bucket too, and the bytes moved are those of
    one reduce-scatter and one all-gather, as without buckets. (An allreduce per bucket followed
    by the sharded step would move half as much again: the all-gather of theta on top.)

    MPICH moves a non-blocking collective on only while a rank is inside MPI; the callback
    polls every request in flight after each layer (``Comm.test_all``), and MPICH's own
    progress thread can be switched on with MPICH_ASYNC_PROGRESS=1 (it spins a core).

    Sums: each bucket is summed by MPI's reduce-scatter over the same ranks in the same way at
    every step, so a run is reproducible bit for bit (resume is exact), but the elements of a
    1 MB bucket may be added in another order than those of the whole 3 MB arena (MPICH picks
    its algorithm by message size): against the unbucketed update the result agrees within
    float rounding, not bitwise.

HierarchicalUpdate -- several ranks per host (Horovod's hierarchical allreduce, NCCL's rings
    per local rank). With L ranks on each of H hosts, the flat reduce-scatter sends every
    rank's gradient share through the host's network link; here it goes in three hops:

        within the host   the L ranks sum their gradients through shared memory; local rank
                          l gets the host's sum of slice l (of L slices of the arena)
        across hosts      the H ranks with local rank l reduce-scatter slice l over MPI: each
                          owns 1/H of it, summed over all ranks; steps it; all-gathers slice l
        within the host   each local rank publishes its new slice l; the others copy it

    so each host sends one gradient's worth, spread over its L ranks, not L of them. Sums: in
    local-rank order inside the host, then MPI's order across hosts -- another order than the
    flat reduce-scatter's, so the two agree within float rounding. It needs the same number
    of ranks on every host (``HierarchicalUpdate.fits``).

Tested by tests/test_dist_overlap.py (both against the plain update, n ranks against 1).
"""
from __future__ import annotations

import numpy as np

from core.optim import SGD
from dist.comm import Comm, Progress


def bucket_ranges(param_offsets: list[int], size: int, bucket_bytes: float,
                  itemsize: int = 4) -> list[tuple[int, int]]:
    """Cut the arena [0, size) into contiguous (lo, hi) ranges of whole layers, from its end:
    bucket 0 holds the last layers (backward finishes them first). A bucket closes once it
    holds at least ``bucket_bytes``; one layer larger than that is a bucket of its own."""
    starts = sorted({p for p in param_offsets if p < size}, reverse=True)   # layer starts
    buckets, hi = [], size
    for lo in starts:
        if (hi - lo) * itemsize >= bucket_bytes or lo == starts[-1]:
            buckets.append((lo, hi))
            hi = lo
    if hi > 0:                                     # parameters before the first layer start
        buckets.append((0, hi))
    return buckets


class Bucket:
    """One contiguous range [lo, hi) of the arena and this rank's slice of it."""

    def __init__(self, comm: Comm, lo: int, hi: int, dtype):
        self.lo, self.hi = lo, hi
        self.counts, self.displs = comm.partition(hi - lo)
        self.mine = lo + int(self.displs[comm.rank])                 # my slice starts here
        self.my_grad = np.empty(int(self.counts[comm.rank]), dtype)  # its summed gradient


class OverlappedUpdate:
    """The sharded update bucket by bucket, each bucket's reduce-scatter started during backward."""

    transport = "MPI collectives, overlapped"

    def __init__(self, comm: Comm, theta: np.ndarray, grad: np.ndarray, opt: SGD,
                 param_offsets: list[int], bucket_bytes: float, poll_thread: bool = True,
                 shard: bool = True):
        self.comm, self.theta, self.grad, self.opt = comm, theta, grad, opt
        self.shard = shard
        self.progress = Progress() if poll_thread else None
        self.buckets = [Bucket(comm, lo, hi, grad.dtype)
                        for lo, hi in bucket_ranges(param_offsets, theta.size, bucket_bytes,
                                                    theta.itemsize)]
        self.in_flight = []                 # requests of the buckets started this step
        self.started = 0                    # buckets[:started] are on their way

    def grad_ready(self, p: int) -> None:
        """Backward's callback: grad[p:] is final. Start every bucket now complete, and poll
        the ones in flight so that MPI moves them on while backward computes."""
        while self.started < len(self.buckets) and self.buckets[self.started].lo >= p:
            b = self.buckets[self.started]
            request = self.comm.ireduce_scatter_sum(self.grad[b.lo:b.hi], b.my_grad, b.counts) \
                if self.shard else self.comm.iallreduce_sum_(self.grad[b.lo:b.hi])
            if self.progress is not None:
                self.progress.add(request)
            else:
                self.in_flight.append(request)
            self.started += 1
        if self.progress is None:
            self.comm.test_all(self.in_flight)

    def reduce_gradient(self) -> None:
        """Start what backward did not (all of it, without the callback); wait for the rest."""
        self.grad_ready(0)
        if self.progress is not None:
            self.in_flight = self.progress.finish()
        self.comm.wait_all(self.in_flight)
        self.in_flight, self.started = [], 0

    def step(self, lr: float) -> None:
        if not self.shard:
            self.opt.step(self.theta, self.grad, lr)
            return
        for b in self.buckets:
            self.opt.step(self.theta, b.my_grad, lr, lo=b.mine)

    def _gather(self, vector: np.ndarray) -> None:
        if not self.shard:
            return
        self.comm.wait_all([self.comm.iallgather_(vector[b.lo:b.hi], b.counts, b.displs)
                            for b in self.buckets])

    def gather_parameters(self) -> None:
        self._gather(self.theta)

    def gather_velocity(self) -> None:
        self._gather(self.opt.velocity)

    def close(self) -> None:
        pass


class HierarchicalUpdate:
    """The sharded update in three hops: shared memory in the host, MPI across hosts, back."""

    transport = "hierarchical (shared memory + MPI across hosts)"

    @staticmethod
    def fits(comm: Comm) -> bool:
        """Several hosts with the same number (> 1) of ranks each."""
        sizes = comm.node_sizes()
        return comm.size > comm.local_size > 1 and len(set(sizes)) == 1

    def __init__(self, comm: Comm, theta: np.ndarray, grad: np.ndarray, opt: SGD):
        self.comm, self.theta, self.grad, self.opt = comm, theta, grad, opt
        self.node, self.across = comm.node(), comm.across_nodes()
        p = theta.size
        # Slice l of the arena belongs to local rank l; within it, part h to host h.
        self.host_counts, self.host_displs = self.node.partition(p)
        self.slice_lo = int(self.host_displs[self.node.rank])
        self.slice_hi = self.slice_lo + int(self.host_counts[self.node.rank])
        self.counts, self.displs = self.across.partition(self.slice_hi - self.slice_lo)
        self.lo = self.slice_lo + int(self.displs[self.across.rank])
        self.my_grad = np.empty(int(self.counts[self.across.rank]), grad.dtype)
        self.host_sum = np.empty(self.slice_hi - self.slice_lo, grad.dtype)
        # Per local rank: its whole gradient (P), then its slice of the new theta.
        self.shared = self.node.shared_vectors(p + int(self.host_counts.max()), theta.dtype)

    def reduce_gradient(self) -> None:
        p, lo, hi = self.theta.size, self.slice_lo, self.slice_hi
        self.shared.mine[:p] = self.grad
        self.shared.sync()                                  # the host's gradients are in place
        vectors = self.shared.vectors
        np.copyto(self.host_sum, vectors[0][lo:hi])
        for other in vectors[1:]:                           # local-rank order: a fixed sum
            self.host_sum += other[lo:hi]
        self.across.reduce_scatter_sum(self.host_sum, self.my_grad, self.counts)

    def step(self, lr: float) -> None:
        self.opt.step(self.theta, self.my_grad, lr, lo=self.lo)

    def _gather(self, vector: np.ndarray, publish) -> None:
        lo, hi = self.slice_lo, self.slice_hi
        self.across.allgather_(vector[lo:hi], self.counts, self.displs)   # slice l, whole
        publish(vector, lo, hi)

    def _publish_shared(self, vector: np.ndarray, lo: int, hi: int) -> None:
        p = self.theta.size
        self.shared.mine[p:p + hi - lo] = vector[lo:hi]
        self.shared.sync()                                  # every local slice is in place
        for rank, other in enumerate(self.shared.vectors):
            if rank != self.node.rank:
                start, n = int(self.host_displs[rank]), int(self.host_counts[rank])
                vector[start:start + n] = other[p:p + n]

    def gather_parameters(self) -> None:
        self._gather(self.theta, self._publish_shared)

    def gather_velocity(self) -> None:
        self._gather(self.opt.velocity,
                     lambda v, lo, hi: self.node.allgather_(v, self.host_counts, self.host_displs))

    def close(self) -> None:
        if self.shared is not None:
            self.shared.free()
            self.shared = None
