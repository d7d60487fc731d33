"""Invariant 2, exact resume: a run killed with SIGKILL and resumed ends bit-identical.

The uninterrupted run and the killed-then-resumed run use the same config and rank count; the
resumed one's final parameters must equal the uninterrupted one's bit for bit. Resuming the same
checkpoint on another rank count lands within 1e-5 (summation order differs).
"""
import os
import shutil
import signal
import time

import h5py
import pytest

from tests.dist_helpers import rel_diff, run_job, small_run_args, start_job, theta_of

pytestmark = pytest.mark.timeout(300)

EXTRA = ("--set", "run.checkpoint_every=5", "--set", "run.keep_last=50")


def kill_after_first_checkpoint(job, run_dir, timeout=120):
    deadline = time.monotonic() + timeout
    while not list(run_dir.glob("ckpt-*.h5")):
        assert job.poll() is None, job.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=30)
    assert not (run_dir / "final.json").exists(), "the run finished before it could be killed"


def full_and_killed_then_resumed(mnist_h5, tmp_path, *extra: str, ranks: int = 2):
    """Train `full` uninterrupted and `killed` killed at its first checkpoint, then resume
    `killed` (`ranks` ranks each); returns the resumed job's result."""
    full = run_job(ranks, small_run_args(mnist_h5, tmp_path, "full", *extra), timeout=180)
    assert full.returncode == 0, full.stderr
    job = start_job(ranks, small_run_args(mnist_h5, tmp_path, "killed", *extra))
    kill_after_first_checkpoint(job, tmp_path / "killed")
    resumed = run_job(ranks, ["--resume", str(tmp_path / "killed")], timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    return resumed


def test_killed_and_resumed_run_is_bitwise_identical(mnist_h5, tmp_path):
    full = run_job(2, small_run_args(mnist_h5, tmp_path, "full", *EXTRA), timeout=180)
    assert full.returncode == 0, full.stderr
    reference = theta_of(tmp_path / "full" / "ckpt-e002-s00000.h5")

    job = start_job(2, small_run_args(mnist_h5, tmp_path, "killed", *EXTRA))
    kill_after_first_checkpoint(job, tmp_path / "killed")
    shutil.copytree(tmp_path / "killed", tmp_path / "killed-1rank")

    resumed = run_job(2, ["--resume", str(tmp_path / "killed")], timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch" in resumed.stdout
    final = theta_of(tmp_path / "killed" / "ckpt-e002-s00000.h5")
    assert final.tobytes() == reference.tobytes()

    # The same checkpoint resumed by the single-process debugging mode: same trajectory.
    one = run_job(1, ["--resume", str(tmp_path / "killed-1rank")], timeout=180)
    assert one.returncode == 0, one.stderr
    assert rel_diff(theta_of(tmp_path / "killed-1rank" / "ckpt-e002-s00000.h5"), reference) < 1e-5


def test_killed_and_resumed_run_with_the_new_switches_is_bitwise_identical(mnist_h5, tmp_path):
    # Elastic distortion, the moving average of the weights and a cyclic schedule with its
    # snapshots: all are functions of the counters and of what the checkpoint saves (batch
    # norm's lr scale, of the config the checkpoint carries).
    extra = (*EXTRA, "--set", "data.augment=true", "--set", "data.elastic_alpha=34",
             "--set", "data.elastic_sigma=4", "--set", "optim.ema_decay=0.9",
             "--set", "schedule.kind=cyclic", "--set", "schedule.cycles=2",
             "--set", "model.label_smoothing=0.1", "--set", "optim.bn_lr_scale=4")
    full_and_killed_then_resumed(mnist_h5, tmp_path, *extra)
    for name in ("ckpt-e002-s00000.h5", "snapshot-c01.h5", "snapshot-c02.h5"):
        with h5py.File(tmp_path / "full" / name, "r") as a, \
                h5py.File(tmp_path / "killed" / name, "r") as b:
            for array in ("theta", "state", "ema_theta", "ema_state"):
                if array in a:
                    assert a[array][...].tobytes() == b[array][...].tobytes(), (name, array)
            assert ("ema_theta" in a) == (name.startswith("ckpt"))   # snapshots: the average


def test_resume_continues_metrics_and_keeps_best(mnist_h5, tmp_path):
    args = small_run_args(mnist_h5, tmp_path, "r", "--set", "train.epochs=1")
    assert run_job(1, args).returncode == 0
    more = run_job(1, ["--resume", str(tmp_path / "r"), "--set", "train.epochs=2"])
    assert more.returncode == 0, more.stderr
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [int(x.split('"epoch": ')[1].split(",")[0]) for x in lines] == [1, 2]
    assert (tmp_path / "r" / "best.h5").exists() and (tmp_path / "r" / "final.json").exists()


def test_one_process_of_two_threads_resumes_bitwise(mnist_h5, tmp_path):
    # Model copies per thread (core/replicas.py): only copy 0's batch-norm statistics are
    # kept, and the checkpoint holds them; killed and resumed, the run ends bit-identical.
    resumed = full_and_killed_then_resumed(mnist_h5, tmp_path, "--set", "run.threads=2", *EXTRA,
                                           ranks=1)
    assert "resuming at epoch" in resumed.stdout and "(a model copy each)" in resumed.stdout
    for name in ("theta", "state"):
        with h5py.File(tmp_path / "full" / "ckpt-e002-s00000.h5", "r") as f:
            reference = f[name][...]
        with h5py.File(tmp_path / "killed" / "ckpt-e002-s00000.h5", "r") as f:
            assert f[name][...].tobytes() == reference.tobytes(), name
