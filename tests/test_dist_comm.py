"""The communicator: in-place allreduce, ranks that wait for rank 0 do not spin a core,
split groups (ensemble members) keep the whole job's share of cores, and the sharded update's
reduce-scatter + all-gather equal an allreduce (4 ranks on 2 cores: the non-blocking path),
and so do the same two halves through a shared-memory window."""
import os
import re
import subprocess
import sys

import pytest

from tests.dist_helpers import MPIRUN_CMD, REPO, env

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("ranks", [2, 4])
def test_waiting_ranks_sleep_and_allreduce_sums(ranks):
    out = subprocess.run([*MPIRUN_CMD, "-n", str(ranks), sys.executable, "tests/comm_probe.py"],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"rank (\d+) waited ([\d.]+)s cpu ([\d.]+)s sum (\d+)", out.stdout)
    assert len(rows) == ranks
    for rank, waited, cpu, total in rows:
        assert int(total) == ranks * (ranks + 1) // 2
        if rank != "0":
            assert float(waited) > 1.5
            # A rank spinning in a blocking MPI call would use ~100% of a core while waiting.
            assert float(cpu) < 0.25 * float(waited), (rank, waited, cpu)
    groups = re.findall(r"rank (\d+) group size (\d+) sum (\d+) cores (\d+) of (\d+) "
                        r"oversubscribed (\w+)", out.stdout)
    assert len(groups) == ranks
    for rank, size, total, cores, world_cores, oversubscribed in groups:
        members = [r + 1 for r in range(ranks) if r % 2 == int(rank) % 2]
        assert (int(size), int(total)) == (len(members), sum(members))
        # A group of 1 rank must not take every core of the node: the other groups share it.
        assert cores == world_cores
        assert oversubscribed == str(ranks > os.cpu_count())
    sharded = re.findall(r"rank \d+ sharded n (\d+) counts (\d+) aligned (\w+) equal (\w+)",
                         out.stdout)
    assert len(sharded) == 2 * ranks
    for n, counts, aligned, equal in sharded:
        assert (counts, aligned, equal) == (n, "True", "True")
    transports = re.findall(r"rank \d+ transports (.*) equal (\w+) threads (\w+)", out.stdout)
    assert transports == [("['allreduce', 'sharded', 'shared-memory']", "True", "True")] * ranks, \
        transports
