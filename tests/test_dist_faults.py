"""Faults end the whole MPI job within seconds, never a hang.

* SIGKILL of one rank mid-training: the job exits non-zero within 10 s, and the last
  checkpoint still loads (it was written atomically).
* An unexpected exception on one rank only: every rank exits within 10 s (MPI Abort from the
  excepthook); an expected one (unreadable data on one rank) is reported once, exit code 2.
"""
import os
import signal
import time

import pytest

from dist.checkpoint import load_checkpoint
from tests.dist_helpers import (error_lines, rank_pids, run_job, small_run_args, start_job)

pytestmark = pytest.mark.timeout(200)

SLOW = ("--set", "train.epochs=50", "--set", "run.checkpoint_every=3")


def test_sigkill_of_one_rank_ends_the_job_and_the_checkpoint_loads(mnist_h5, tmp_path):
    job = start_job(2, small_run_args(mnist_h5, tmp_path, "victim", *SLOW))
    deadline = time.monotonic() + 120
    while not list((tmp_path / "victim").glob("ckpt-*.h5")):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1]
        time.sleep(0.02)
    pids = rank_pids("run.name=victim")
    assert len(pids) == 2
    os.kill(pids[-1], signal.SIGKILL)
    killed = time.monotonic()
    try:
        job.wait(timeout=10)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    assert time.monotonic() - killed < 10
    assert all(not os.path.exists(f"/proc/{pid}") or
               open(f"/proc/{pid}/stat").read().split()[2] == "Z" for pid in pids)
    ckpt = load_checkpoint(tmp_path / "victim")
    assert ckpt.global_step >= 3


FAULTY = "tests/faulty_rank.py"  # dist.train with one rank's shard reader broken


@pytest.mark.parametrize("kind", ["crash", "dataerror"])
def test_failure_on_one_rank_ends_every_rank(mnist_h5, tmp_path, kind):
    # Without the abort/agree machinery rank 0 would wait forever in its next collective:
    # the timeout (startup included) turns such a hang into a failure.
    result = run_job(2, [kind, *small_run_args(mnist_h5, tmp_path, kind)],
                     timeout=40, module=FAULTY)
    assert result.returncode != 0
    if kind == "dataerror":
        assert result.returncode == 2
        lines = error_lines(result.stderr)
        assert lines == ["error: rank 1 cannot read its shard (injected by the test)"], lines
    else:
        assert result.stderr.count("RuntimeError: injected crash on rank 1") == 1
        assert "aborting the MPI job" in result.stderr
