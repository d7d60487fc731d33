"""`dist.train` with rank 1's shard reader broken, for tests/test_dist_faults.py.

    mpirun -n 2 python tests/faulty_rank.py crash|dataerror [dist.train arguments]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dist.train as train  # noqa: E402
from data.errors import DataError  # noqa: E402
from dist.collective import run_main  # noqa: E402

kind, argv = sys.argv[1], sys.argv[2:]
real_reader = train.read_epoch_shard


def broken_reader(path, seed, epoch, rank, size, *args, **kwargs):
    if rank == 1 and kind == "crash":
        raise RuntimeError("injected crash on rank 1")
    if rank == 1:
        raise DataError("rank 1 cannot read its shard (injected by the test)")
    return real_reader(path, seed, epoch, rank, size, *args, **kwargs)


train.read_epoch_shard = broken_reader
sys.exit(run_main(train.main, argv))
