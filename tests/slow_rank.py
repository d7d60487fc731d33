"""`dist.train` with rank 1 slowed on purpose, for tests/test_dist_timeline.py and
tests/test_launch_report.py: it sleeps before every batch it prepares (its data step), so
the other rank waits for it at every step's first collective.

    mpirun -n 2 python tests/slow_rank.py SECONDS [dist.train arguments]
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dist.train as train  # noqa: E402
from dist.collective import run_main  # noqa: E402

delay, argv = float(sys.argv[1]), sys.argv[2:]
real_batch, real_main = train.local_batch, train.main


def slow_batch(*args, **kwargs):
    time.sleep(delay)
    return real_batch(*args, **kwargs)


def main(comm, argv):
    if comm.rank == 1:
        train.local_batch = slow_batch
    return real_main(comm, argv)


sys.exit(run_main(main, argv))
