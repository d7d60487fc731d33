"""Run a job in a private /dev/shm and print what it left there, for tests/test_dist_shm.py.

    unshare --mount --fork sh -c 'mount -t tmpfs tmpfs /dev/shm && exec python tests/shm_probe.py \
        KIND DATA TMP'

KIND: crash | dataerror (tests/faulty_rank.py: one rank fails, the job aborts),
      sigterm (SIGTERM to mpirun: the graceful stop),
      sigkill (a rank is SIGKILLed: nothing can run; then `python -m dist.shm` cleans up).
Prints one JSON line: {"before": [...], "after": [...], "cleaned": [...], "returncode": N}.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.dist_helpers import env, rank_pids, run_job, small_run_args, start_job  # noqa: E402

kind, data, tmp = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
listing = lambda: sorted(os.listdir("/dev/shm"))  # noqa: E731
before = listing()
if kind in ("crash", "dataerror"):
    done = run_job(2, [kind, *small_run_args(data, tmp, kind)], timeout=60,
                   module="tests/faulty_rank.py")
    code = done.returncode
else:
    job = start_job(2, small_run_args(data, tmp, kind, "--set", "train.epochs=50"))
    deadline = time.monotonic() + 60
    while len(rank_pids(f"run.name={kind}")) < 2 or not listing():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1]
        time.sleep(0.05)
    time.sleep(1)
    if kind == "sigterm":
        os.kill(job.pid, signal.SIGTERM)
    else:
        os.kill(rank_pids(f"run.name={kind}")[-1], signal.SIGKILL)
    job.wait(timeout=30)
    code = job.returncode
after = listing()
cleaned = subprocess.run([sys.executable, "-m", "dist.shm", "--min-age", "0"], env=env(),
                         capture_output=True, text=True).stdout.splitlines()
print(json.dumps({"before": before, "after": after, "cleaned": cleaned, "left": listing(),
                  "returncode": code}))
