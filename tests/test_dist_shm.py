"""No /dev/shm leaks: a job that aborts (an unhandled exception, or an error on one rank only)
removes MPICH's shared-memory file on its way out, and so does one stopped by SIGTERM; one that is SIGKILLed cannot, and
``python -m dist.shm`` removes what it left.

Each job runs in a private /dev/shm (a mount namespace with its own tmpfs), so the count is
exact while other jobs on the machine come and go.
"""
import json
import subprocess
import sys

import pytest

from tests.dist_helpers import REPO, env

pytestmark = pytest.mark.timeout(120)


def in_private_shm(kind: str, data, tmp_path) -> dict:
    script = ('mount -t tmpfs tmpfs /dev/shm && exec "$0" tests/shm_probe.py "$1" "$2" "$3"')
    done = subprocess.run(["unshare", "--mount", "--fork", "sh", "-c", script, sys.executable,
                           kind, str(data), str(tmp_path)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=110)
    if done.returncode != 0 and "unshare" in done.stderr + done.stdout:
        pytest.skip(f"no private /dev/shm here (needs root and mount namespaces): "
                    f"{done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("kind", ["crash", "dataerror", "sigterm"])
def test_aborting_job_leaves_nothing_in_dev_shm(mnist_h5, tmp_path, kind):
    out = in_private_shm(kind, mnist_h5, tmp_path)
    assert out["returncode"] != 0
    assert out["before"] == [] and out["after"] == [], out


def test_sigkill_leftovers_are_cleaned_by_dist_shm(mnist_h5, tmp_path):
    out = in_private_shm("sigkill", mnist_h5, tmp_path)
    assert out["returncode"] != 0
    assert any(name.startswith("mpich_shm_") for name in out["after"]), out   # what SIGKILL leaves
    assert out["cleaned"][-1] == f"{len(out['after'])} leftover MPI shared-memory file(s) in /dev/shm"
    assert out["left"] == [], out
