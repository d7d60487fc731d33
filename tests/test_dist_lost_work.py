"""No path loses work that exists (issue 29, item 1): resume, pruning, the stop line and export
go by what a checkpoint holds -- its position in the run, whether it loads -- not its name.

* a run resumed from an older checkpoint, then stopped: the stop line's command continues the
  stopped step exactly (bitwise the same end as the run it replaced), and the later
  checkpoints of the replaced continuation are kept aside, not continued, not deleted;
* keep_last=1 with a damaged newest checkpoint: the stop checkpoint survives and resumes;
* ``dist.checkpoint export`` refuses to write over a run's training checkpoints.
"""
import signal

import pytest

from dist import checkpoint as ck
from tests.dist_helpers import (assert_one_line_error, run_job, small_run_args, snapshot,
                                theta_of)

pytestmark = pytest.mark.timeout(240)

THREE = ("--set", "train.steps_per_epoch=6", "--set", "train.epochs=3", "--set",
         "run.keep_last=3")


def stop_line(job) -> str:
    lines = [ln for ln in job.stdout.splitlines() if ln.startswith("stopped at")]
    assert job.returncode == 128 + signal.SIGTERM and len(lines) == 1, (job.stdout, job.stderr)
    return lines[0]


def test_stop_after_resuming_an_older_checkpoint_continues_the_stopped_step(mnist_h5,
                                                                           tmp_path):
    done = run_job(2, small_run_args(mnist_h5, tmp_path, "r", *THREE))
    assert done.returncode == 0, done.stderr
    run = tmp_path / "r"
    replaced = theta_of(run / "ckpt-e003-s00000.h5")
    # Back to the end of epoch 1; stopped by a signal during the first mid-epoch checkpoint.
    job = run_job(2, ["checkpoint:1", "TERM", "mpirun", "--resume",
                      str(run / "ckpt-e001-s00000.h5"), "--set", "run.checkpoint_every=2"],
                  module="tests/signal_at.py")
    line = stop_line(job)
    aside = list(run.glob("abandoned-*/ckpt-e003-s00000.h5"))
    assert len(aside) == 1 and "kept in" in job.stdout
    assert not (run / "ckpt-e003-s00000.h5").exists()
    command = line.split("continue with ")[1].split()
    stopped = line.split("checkpoint ")[1].split(";")[0]
    held = ck.load_checkpoint(stopped)
    assert held.epoch == 1 and held.step > 0

    resumed = run_job(2, command)
    assert resumed.returncode == 0, resumed.stderr
    step = held.step
    assert f"resuming at epoch 2 step {step}" in resumed.stdout
    assert theta_of(run / "ckpt-e003-s00000.h5").tobytes() == replaced.tobytes()
    assert theta_of(aside[0]).tobytes() == replaced.tobytes()      # still there, unchanged


def test_keep_last_one_with_a_damaged_newest_keeps_the_stop_checkpoint(mnist_h5, tmp_path):
    done = run_job(2, small_run_args(mnist_h5, tmp_path, "r", "--set", "train.steps_per_epoch=6",
                                     "--set", "train.epochs=1", "--set", "run.keep_last=1"))
    assert done.returncode == 0, done.stderr
    run = tmp_path / "r"
    (run / "ckpt-e003-s00000.h5").write_bytes(b"\x89HDF damaged" * 50)
    job = run_job(2, ["checkpoint:1", "TERM", "mpirun", "--resume", str(run), "--set",
                      "train.epochs=2", "--set", "run.checkpoint_every=2"],
                  module="tests/signal_at.py")
    assert "warning: skipping" in job.stdout
    line = stop_line(job)
    stopped = line.split("checkpoint ")[1].split(";")[0]
    assert ck.load_checkpoint(stopped).step > 0
    resumed = run_job(2, line.split("continue with ")[1].split())
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2 step" in resumed.stdout and (run / "final.json").exists()


def test_prune_never_removes_the_written_or_the_newest_loadable(tmp_path):
    from tests.test_dist_checkpoint_space import state
    for epoch in (1, 2):
        ck.write_checkpoint(tmp_path, state(tmp_path, epoch), keep_last=1, best=False)
    (tmp_path / "ckpt-e009-s00000.h5").write_bytes(b"damaged")
    resumed = state(tmp_path, 1)
    resumed.path, resumed.step = tmp_path / ck.checkpoint_name(1, 5), 5
    ck.write_checkpoint(tmp_path, resumed, keep_last=1, best=False)
    names = [p.name for p in ck.numbered_checkpoints(tmp_path)]
    # the damaged newest name, the file just written, and the newest that loads (e002)
    assert names == ["ckpt-e001-s00005.h5", "ckpt-e002-s00000.h5", "ckpt-e009-s00000.h5"]


@pytest.mark.parametrize("target", ["ckpt-e001-s00000.h5", "best.h5", "copy.h5"])
def test_export_never_overwrites_a_training_checkpoint(mnist_h5, tmp_path, target):
    done = run_job(1, small_run_args(mnist_h5, tmp_path, "r", "--set", "train.epochs=1",
                                     "--set", "train.steps_per_epoch=3"))
    assert done.returncode == 0, done.stderr
    run = tmp_path / "r"
    (tmp_path / "copy.h5").write_bytes((run / "ckpt-e001-s00000.h5").read_bytes())
    out = tmp_path / "copy.h5" if target == "copy.h5" else run / target
    before = snapshot(tmp_path)
    job = run_job(1, ["export", str(run), str(out)], module="dist.checkpoint")
    assert_one_line_error(job, str(out), "choose another name")
    assert snapshot(tmp_path) == before
