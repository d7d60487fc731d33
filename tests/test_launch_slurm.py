"""launch/slurm.sbatch on a real Slurm: preempted mid-epoch, requeued, finished bitwise.

A one-node cluster on localhost (tests/slurm_cluster.py: Debian's slurm-wlm and munge, which
.ci/run installs). The job (2 tasks, `srun --mpi=pmi2`, the mpich wheel) trains mlp for two
epochs of 400 steps, about 2 s each here (the requeue must land inside epoch 2; 120 steps once
took 0.5 s and the signal came after the last step). Once epoch 1's checkpoint exists,
`scontrol requeue` does what a preemption does: SIGTERM to every task, then the job goes back
in the queue. The trainer stops at the next step with a checkpoint of it; the requeued job
(same job id, same run name, `--resume auto`) continues it, and its final weights equal an
uninterrupted run's bit for bit.

Slurm 22.05 holds a requeued job for ~2 minutes (its BeginTime); the test lifts that hold
with `scontrol update StartTime=now` rather than wait.
"""
import json
import subprocess
import sys
import time

import pytest

from tests.dist_helpers import REPO, env, run_job, theta_of
from tests.slurm_cluster import SlurmCluster, missing

pytestmark = pytest.mark.timeout(240)

TRAIN = ["--preset", "mlp", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=400",
         "--set", "data.val_size=1000", "--set", "run.keep_last=10"]


@pytest.fixture(scope="module")
def cluster():
    reason = missing()
    if reason:
        pytest.skip(f"no Slurm here: {reason}")
    with SlurmCluster() as c:
        yield c


def test_preempted_job_resumes_bitwise(cluster, mnist_h5, tmp_path):
    runs = tmp_path / "runs"
    reference = run_job(2, [*TRAIN, "--set", f"data.path={mnist_h5}", "--set", "run.threads=1",
                            "--set", f"run.dir={runs}", "--set", "run.name=reference",
                            "--set", "run.progress=false"], timeout=120)
    assert reference.returncode == 0, reference.stderr

    e = {**env(), **cluster.env(), "VENV": sys.prefix, "MPIGRAD_DATA": str(mnist_h5),
         "RUN_NAME": "preempted"}
    e["PYTHONPATH"] = env()["PYTHONPATH"]
    log = tmp_path / "job.out"
    submitted = subprocess.run(["sbatch", "--parsable", "-N1", "-n2", "--cpus-per-task=1",
                                f"--output={log}", "launch/slurm.sbatch", *TRAIN,
                                "--set", f"run.dir={runs}"],
                               cwd=REPO, env=e, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    run = runs / "preempted"

    deadline = time.monotonic() + 120
    while not (run / "ckpt-e001-s00000.h5").exists():
        assert cluster.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), \
            f"{cluster.job_state(job)}: {log.read_text() if log.exists() else ''}"
        assert time.monotonic() < deadline, "epoch 1 never ended"
        time.sleep(0.1)
    time.sleep(0.2)                     # into epoch 2, well before its end
    assert subprocess.run(["scontrol", "requeue", job], env=e).returncode == 0

    cluster.wait_state(job, {"PENDING"}, timeout=60)
    assert cluster.job_field(job, "Restarts") == "1"
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=e, check=True)
    state = cluster.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    output = log.read_text()
    assert state == "COMPLETED", output

    stopped = [ln for ln in output.splitlines() if ln.startswith("stopped at epoch 2 step")]
    assert len(stopped) == 1 and "SIGTERM" in stopped[0], output
    assert "--resume" in stopped[0]
    assert "resuming at epoch 2 step" in output
    final, expected = run / "ckpt-e002-s00000.h5", runs / "reference" / "ckpt-e002-s00000.h5"
    assert theta_of(final).tobytes() == theta_of(expected).tobytes()
    # The epoch that was cut in two is logged whole: the same as the uninterrupted run's line.
    cut, whole = (json.loads(p.read_text().splitlines()[1])
                  for p in (run / "metrics.jsonl", runs / "reference" / "metrics.jsonl"))
    for key in ("epoch", "train_loss", "train_acc", "val_acc"):
        assert cut[key] == pytest.approx(whole[key], rel=1e-12), key
