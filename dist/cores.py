"""How the ranks on one node share its cores: threads per rank, and whether ranks outnumber cores.

A launcher that pins ranks (srun --cpus-per-task, mpirun --bind-to) gives each rank its own
disjoint set of cores: the rank uses all of its set. Otherwise every rank on the node sees the
same cores, and they divide them. Ranks that outnumber the cores are *oversubscribed*: a rank
that waits inside MPI must then give its core away, so dist/comm.py polls and yields instead of
making a blocking call (MPICH's blocking calls spin).

``Comm`` works the share out once, when the job starts, from every rank's CPU affinity gathered
over the node (``share_cores``), and hands it to its sub-communicators: ensemble groups still
share the node's cores, so 3 groups of 1 rank on 2 cores are oversubscribed, although each group
alone would think it had both cores.

    comm.cores.per_rank          threads for this rank's own work (dist.train's model copies)
    comm.cores.oversubscribed    more ranks on this node than cores
    root_threads(comm)           threads for rank 0's work while the others wait (evaluation)

Try it:  mpirun -n 3 python -m dist.cores
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CoreShare:
    per_rank: int          # cores (threads) each rank of the node may use for its own work
    oversubscribed: bool   # more ranks on the node than cores: a waiting rank must yield


def my_cores() -> set[int]:
    """The cores this process may run on (its CPU affinity, as the launcher set it)."""
    return os.sched_getaffinity(0)


def share_cores(mine: set[int], node: list[set[int]]) -> CoreShare:
    """The share of this rank, from its own cores and those of every rank on the node (``mine``
    among them)."""
    cores = set().union(*node)
    disjoint = sum(len(s) for s in node) == len(cores)    # pinned: nobody's cores overlap
    per_rank = len(mine) if disjoint else max(1, len(cores) // len(node))
    return CoreShare(per_rank=per_rank, oversubscribed=len(node) > len(cores))


def root_threads(comm) -> int:
    """Threads for work rank 0 does while the other ranks of ``comm`` sleep (evaluation): the
    cores of all of them. Not all of the node's: in an ensemble, the other groups' roots
    evaluate at the same time."""
    return max(1, min(len(my_cores()), comm.cores.per_rank * comm.local_size))


if __name__ == "__main__":
    import sys
    from dist.comm import Comm
    comm = Comm()
    sys.stdout.write(f"rank {comm.rank}/{comm.size}: cores {sorted(my_cores())}, "   # one write:
                     f"{comm.local_size} ranks on this node; {comm.cores}; "       # no torn lines
                     f"root threads {root_threads(comm)}\n")
