"""Graceful stop (dist/stop.py): a signal to mpirun or to one rank stops the job at the next
step with a checkpoint of that step and exit status 128 + signal; --resume continues it to
final weights bitwise equal to an uninterrupted run's, and the epoch cut in two is logged
whole. A second signal aborts at once. --resume auto starts or continues as the folder says.
"""
import json
import os
import signal
import time

import pytest

from tests.dist_helpers import rank_pids, run_job, small_run_args, start_job, theta_of

pytestmark = pytest.mark.timeout(180)

LONGER = ("--set", "train.steps_per_epoch=40", "--set", "train.epochs=2")


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_h5):
    folder = tmp_path_factory.mktemp("reference")
    done = run_job(2, small_run_args(mnist_h5, folder, "ref", *LONGER))
    assert done.returncode == 0, done.stderr
    return folder / "ref"


def wait_for(path, job, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


@pytest.mark.parametrize("sig, target", [(signal.SIGTERM, "mpirun"), (signal.SIGINT, "mpirun"),
                                         (signal.SIGUSR1, "rank 1")])
def test_signal_stops_with_a_checkpoint_and_resume_is_bitwise(mnist_h5, tmp_path, reference,
                                                              sig, target):
    job = start_job(2, small_run_args(mnist_h5, tmp_path, "run", *LONGER))
    run = tmp_path / "run"
    wait_for(run / "ckpt-e001-s00000.h5", job)                  # stop it in epoch 2
    pid = job.pid if target == "mpirun" else rank_pids("run.name=run")[1]
    os.kill(pid, sig)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 128 + sig, err
    lines = [ln for ln in out.splitlines() if ln.startswith("stopped at")]
    assert len(lines) == 1 and f"by {signal.Signals(sig).name}" in lines[0], out
    assert f"continue with --resume {run}" in lines[0]
    stopped = sorted(run.glob("ckpt-e001-s*.h5"))[-1]           # mid-epoch 2: ckpt-e001-sSSSSS
    assert stopped.name != "ckpt-e001-s00000.h5" and stopped.name in lines[0]
    assert not (run / "lock").exists() and err.strip() == ""

    resumed = run_job(2, ["--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    final = theta_of(run / "ckpt-e002-s00000.h5")
    assert final.tobytes() == theta_of(reference / "ckpt-e002-s00000.h5").tobytes()
    cut, whole = metrics(run)[1], metrics(reference)[1]
    assert cut["epoch"] == 2 and len(metrics(run)) == 2
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert cut[key] == pytest.approx(whole[key], rel=1e-12), key


def test_second_signal_aborts_at_once(mnist_h5, tmp_path):
    """Both Ctrl-C land before the first step boundary: no stop, an abort. The first step is
    made long (a 5x5 convolution to 48 channels on 8000 images, seconds on one core, in many
    short numpy calls, so each signal's handler runs soon after it arrives), and the signals
    are 0.2 s apart: two signals that arrive inside one long C call would count as one."""
    wide = '[{type="conv",out=48,kernel=5,pad=2},{type="relu"},{type="flatten"},{type="dense",out=10}]'
    job = start_job(1, small_run_args(mnist_h5, tmp_path, "run", *LONGER,
                                      "--set", "train.batch_size=8000",
                                      "--set", f"model.layers={wide}"))
    wait_for(tmp_path / "run" / "config.json", job)
    job.send_signal(signal.SIGINT)
    time.sleep(0.2)
    job.send_signal(signal.SIGINT)
    out, err = job.communicate(timeout=30)
    assert job.returncode == 130, err
    assert "stopped at" not in out and not list((tmp_path / "run").glob("*.h5"))


def test_resume_auto_starts_then_continues(mnist_h5, tmp_path, reference):
    args = small_run_args(mnist_h5, tmp_path, "auto", *LONGER)
    first = run_job(1, ["--resume", "auto", *args, "--set", "train.epochs=1"])
    assert first.returncode == 0, first.stderr
    assert "resuming" not in first.stdout
    second = run_job(1, ["--resume", "auto", *args])
    assert second.returncode == 0, second.stderr
    assert "resuming at epoch 2 step 0" in second.stdout
    assert [m["epoch"] for m in metrics(tmp_path / "auto")] == [1, 2]
