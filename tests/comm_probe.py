"""MPI probe for tests/test_dist_comm.py: `mpirun -n N python tests/comm_probe.py`.

Rank 0 works for 2 s (like an evaluation) while the others wait in `agree`; each rank prints
how much CPU it used while waiting, then the sum of an allreduce. Then the ranks split into
two groups (as `dist.ensemble` does) and each rank prints its group's sum and BLAS cores.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dist.collective import agree  # noqa: E402
from dist.comm import Comm  # noqa: E402


def say(line: str) -> None:
    """One write per line: print() writes the newline separately, and mpirun's merged output
    could then put two ranks' lines on one."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


comm = Comm()
wall, cpu = time.perf_counter(), time.process_time()
if comm.is_root:
    time.sleep(2.0)  # rank 0 is busy; it does not need the CPU for this probe
agree(comm, True)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
buf = np.full(1000, comm.rank + 1, dtype=np.float32)
comm.allreduce_sum_(buf)
say(f"rank {comm.rank} waited {wall:.2f}s cpu {cpu:.2f}s sum {buf[0]:.0f} "
    f"oversubscribed {comm.cores.oversubscribed}")

group = comm.split(comm.rank % 2)
buf = np.full(10, comm.rank + 1, dtype=np.float32)
group.allreduce_sum_(buf)
say(f"rank {comm.rank} group size {group.size} sum {buf[0]:.0f} cores {group.cores.per_rank} "
    f"of {comm.cores.per_rank} oversubscribed {group.cores.oversubscribed}")

# The sharded update's collectives: reduce-scatter then all-gather must equal an allreduce,
# also when the vector does not split evenly or is too short for every rank to own a slice.
for n in (1001, 20):
    counts, displs = comm.partition(n)
    full = np.arange(n, dtype=np.float32) * (comm.rank + 1)
    mine = np.empty(int(counts[comm.rank]), np.float32)
    comm.reduce_scatter_sum(full, mine, counts)
    theta = np.zeros(n, np.float32)
    lo = int(displs[comm.rank])
    theta[lo:lo + len(mine)] = mine
    comm.allgather_(theta, counts, displs)
    expected = np.arange(n, dtype=np.float32) * (comm.size * (comm.size + 1) // 2)
    say(f"rank {comm.rank} sharded n {n} counts {counts.sum()} aligned {((displs % 16 == 0) | (counts == 0)).all()} "
        f"equal {np.array_equal(theta, expected)}")

# Every update kind (dist/update.py) on an uneven vector, twice in a row (the second step
# reuses the shared-memory window): each rank's theta equals the plain allreduce's; a rank's
# 3 threads sharing its optimizer step give its 1 thread's theta bit for bit.
from core.optim import SGD  # noqa: E402
from dist.update import make_update  # noqa: E402
n = 1001
results, threaded = {}, []
for kind in ("allreduce", "sharded", "shared-memory"):
    for threads in (1, 3):
        theta, grad = np.zeros(n, np.float32), np.empty(n, np.float32)
        update = make_update(comm, theta, grad, SGD(n, momentum=0.5, weight_decay=0.1),
                             kind=kind, threads=threads)
        for step in range(2):
            grad[...] = np.arange(n, dtype=np.float32) * (comm.rank + 1) + step
            update.reduce_gradient()
            update.step(1.0)
            update.gather_parameters()
        if threads == 1:
            results[update.transport] = theta
        else:
            threaded.append(np.array_equal(theta, results[update.transport]))
        update.close()
# With 2 ranks every sum is of two numbers (bitwise equal); with more, the order may differ.
equal = all(np.allclose(results["allreduce"], other, rtol=1e-6) for other in results.values())
say(f"rank {comm.rank} transports {sorted(results)} equal {equal} threads {all(threaded)}")
