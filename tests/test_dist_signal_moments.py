"""A stop signal at every moment of a job (dist/stop.py), sent at an exact point by
tests/signal_at.py: the job ends with exit 128 + signal, nothing on stderr, the lock released,
no MPI file left in /dev/shm, and the run either complete (final.json) or finished by
``--resume RUN``.

The moments of a 2-epoch run (report_test on, no test during training): evaluations 1 and 2
are the two validations, 3 the final test of best.h5; checkpoint writes 1 and 2 are the two
epochs' ends.
"""
import json
import signal

import pytest

from dist.shm import leftovers
from tests.dist_helpers import error_lines, run_job, small_run_args

pytestmark = pytest.mark.timeout(180)

SHORT = ("--set", "train.steps_per_epoch=3", "--set", "train.epochs=2")


@pytest.mark.parametrize("moment, target", [
    ("import", "self"),          # every rank, before MPI started: stops at the first step
    ("startup", "mpirun"),       # rank 0 preparing the data file
    ("evaluate:1", "mpirun"),    # the first epoch's validation: stops in epoch 2
    ("evaluate:2", "mpirun"),    # the last validation: no step boundary follows
    ("checkpoint:2", "self"),    # the last epoch's checkpoint, rank 0 alone
    ("final-test", "mpirun"),    # the final test evaluation: ended at once
    ("final-json", "self"),      # writing final.json: not written, or written whole
])
def test_a_signal_at_any_moment_ends_the_job_gracefully(mnist_h5, tmp_path, moment, target):
    before = set(leftovers(min_age=0))
    run = tmp_path / "run"
    job = run_job(2, [moment, "TERM", target, *small_run_args(mnist_h5, tmp_path, "run", *SHORT)],
                  module="tests/signal_at.py")
    assert job.returncode == 128 + signal.SIGTERM, job.stderr
    assert error_lines(job.stderr) == [], job.stderr
    assert [ln for ln in job.stdout.splitlines() if ln.startswith("stopped ")], job.stdout
    assert not (run / "lock").exists()
    assert set(leftovers(min_age=0)) <= before
    assert not list(run.glob("*.tmp")) and not (run / "final.json").exists()

    resumed = run_job(2, ["--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads((run / "final.json").read_text())
    assert final["test_acc"] is not None and final["best_epoch"] == 2
    assert [json.loads(ln)["epoch"] for ln in
            (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_auto_leaves_a_complete_run_alone(mnist_h5, tmp_path):
    """Stopped in the final test, completed by --resume; then --resume auto (a requeued batch
    job) says the run is complete and leaves final.json as it is."""
    run = tmp_path / "run"
    args = small_run_args(mnist_h5, tmp_path, "run", *SHORT)
    job = run_job(2, ["final-test", "TERM", "self", *args], module="tests/signal_at.py")
    assert job.returncode == 143, job.stderr
    again = run_job(2, ["--resume", str(run)])
    assert again.returncode == 0 and (run / "final.json").exists()
    written = (run / "final.json").read_bytes()
    auto = run_job(2, ["--resume", "auto", *args])
    assert auto.returncode == 0, auto.stderr
    assert "complete already" in auto.stdout and "resuming" not in auto.stdout
    assert (run / "final.json").read_bytes() == written
