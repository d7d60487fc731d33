"""The synchronous SGD update, with its work shared out over the ranks (ZeRO stage 1).

Every rank must end the step with the same new theta.  The plain way: allreduce the gradient,
then every rank runs the same optimizer over all P parameters -- n copies of the same work.
The sharded way (Rajbhandari et al. 2020, "ZeRO", stage 1), in three steps:

    reduce-scatter   rank r receives the summed gradient of its own slice theta[lo_r:hi_r]
    optimizer        rank r updates that slice (P/n parameters) and its slice of velocity
    all-gather       every rank receives the other ranks' updated slices: theta is whole again

An allreduce of a large buffer *is* a reduce-scatter followed by an all-gather (that is how
MPICH and ring allreduces do it), so the bytes moved are the same; what goes away is (n-1)/n
of the optimizer's passes over memory, which for the mlp preset were a quarter of a step.
The sums are the allreduce's up to float summation order, and the update of an element does
not depend on which rank computes it, so the world-size invariance holds.

Each rank's velocity is current on its own slice only.  ``gather_velocity()`` makes it whole on
every rank (a checkpoint needs it); a resumed run hands every rank the whole vector.

    update = ShardedUpdate(comm, model.theta, model.grad, opt)
    model.backward(dout)              # fills model.grad with this rank's gradient
    update.reduce_gradient()          # the summed gradient of this rank's slice
    update.step(lr)                   # SGD on this rank's slice of theta
    update.gather_parameters()        # theta whole again, the same on every rank
    update.finite()                   # False if the step produced inf/NaN (same on all ranks)
    update.gather_velocity()          # before writing a checkpoint
    update.close()                    # collective: frees the shared-memory window

How the two halves travel: when every rank is on one node, through one shared-memory window
(``Comm.shared_vectors``): each rank copies its gradient into its own part of the window, and
after a barrier sums its slice straight out of everybody's parts (in rank order, so the
result does not depend on timing); after the step it publishes its updated slice the same way
and copies the others' after a second barrier. Across nodes, MPI's Reduce_scatter and
Allgatherv. (launch.bench times both, and the plain update, side by side.)

``shard=False`` is the plain allreduce-then-update-everything step; ``shared_memory=False``
keeps the MPI collectives on one node.  Tested by tests/test_dist_invariance.py (n ranks
against 1, bitwise resume) and tests/comm_probe.py (both transports give the same theta).
"""
from __future__ import annotations

import numpy as np

from core.optim import SGD
from dist.comm import Comm


class ShardedUpdate:
    def __init__(self, comm: Comm, theta: np.ndarray, grad: np.ndarray, opt: SGD,
                 shard: bool = True, shared_memory: bool = True):
        self.comm, self.theta, self.grad, self.opt = comm, theta, grad, opt
        self.shard = shard and comm.size > 1
        self.shared = None
        if self.shard:
            self.counts, self.displs = comm.partition(theta.size)
            self.lo = int(self.displs[comm.rank])
            self.hi = self.lo + int(self.counts[comm.rank])
            self.my_grad = np.empty(self.hi - self.lo, grad.dtype)             # (P/n,)
            if shared_memory and comm.single_node:
                # Per rank: its whole gradient (P), then its updated slice of theta (P/n).
                self.shared = comm.shared_vectors(theta.size + int(self.counts.max()),
                                                  theta.dtype)
        else:
            self.lo, self.my_grad = 0, grad                                    # (P,)

    @property
    def transport(self) -> str:
        """How the gradient and the parameters travel (for logs and the benchmark)."""
        if not self.shard:
            return "allreduce" if self.comm.size > 1 else "none"
        return "shared memory" if self.shared is not None else "MPI collectives"

    def reduce_gradient(self) -> None:
        """Sum the gradient over ranks: this rank's slice into my_grad (or all of it in place)."""
        if self.shared is not None:
            p, vectors = self.grad.size, self.shared.vectors
            self.shared.mine[:p] = self.grad
            self.shared.sync()                          # every rank's gradient is in place
            np.copyto(self.my_grad, vectors[0][self.lo:self.hi])
            for other in vectors[1:]:                   # rank order: the same sum every time
                self.my_grad += other[self.lo:self.hi]
        elif self.shard:
            self.comm.reduce_scatter_sum(self.grad, self.my_grad, self.counts)
        else:
            self.comm.allreduce_sum_(self.grad)

    def step(self, lr: float) -> None:
        """The optimizer on this rank's slice of theta (all of it without sharding)."""
        self.opt.step(self.theta, self.my_grad, lr, lo=self.lo)

    def gather_parameters(self) -> None:
        if self.shared is not None:
            p = self.theta.size
            self.shared.mine[p:p + self.hi - self.lo] = self.theta[self.lo:self.hi]
            self.shared.sync()                          # every rank's new slice is in place
            for rank, other in enumerate(self.shared.vectors):
                if rank != self.comm.rank:
                    lo, n = int(self.displs[rank]), int(self.counts[rank])
                    self.theta[lo:lo + n] = other[p:p + n]
        elif self.shard:
            self.comm.allgather_(self.theta, self.counts, self.displs)

    def finite(self) -> bool:
        """Whether theta is still finite after the step.  A non-finite gradient anywhere makes
        the updated theta non-finite there (lr * inf or lr * NaN), and every rank holds the
        same theta, so every rank reaches the same verdict without another collective.
        (min and max, not a dot product: NaN and inf carry through them, but huge finite
        weights do not overflow them -- those are for --debug to trace to a layer.)"""
        return bool(np.isfinite(self.theta.min()) and np.isfinite(self.theta.max()))

    def gather_velocity(self) -> None:
        """Make the optimizer's velocity whole on every rank (collective: call on all ranks)."""
        if self.shard:
            self.comm.allgather_(self.opt.velocity, self.counts, self.displs)

    def close(self) -> None:
        """Free the shared-memory window (collective: every rank, once, before exiting)."""
        if self.shared is not None:
            self.shared.free()
            self.shared = None
