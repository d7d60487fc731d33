"""One job per run folder (dist/runlock.py): two real jobs with the same run.name, the second
refused with one line while the first finishes untouched; a stale lock of a dead job taken
over; a lock of another host refused (its owner cannot be checked from here); a lock that cannot
be read (empty, garbage, binary, a folder, a dangling link, a huge pid) refused with one line
that names it and the way out; a full disk before the lock's first byte leaves no lock."""
import socket
import subprocess
import sys
import time

import pytest

from dist.runlock import RunLock, read_owner
from tests.dist_helpers import (assert_one_line_error, run_job, small_run_args, snapshot,
                                start_job)
from tests.test_dist_checkpoint_space import mounted

pytestmark = pytest.mark.timeout(180)


def test_second_job_on_the_same_run_folder_is_refused(mnist_h5, tmp_path):
    first = start_job(2, small_run_args(mnist_h5, tmp_path, "shared"))
    run = tmp_path / "shared"
    deadline = time.monotonic() + 60
    while not (run / "config.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    host, pid, _ = read_owner(run / "lock")
    second = run_job(2, small_run_args(mnist_h5, tmp_path, "shared"))
    assert_one_line_error(second, f"{run}: in use by job {pid} on {host}")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert [line.count('"epoch"') for line in (run / "metrics.jsonl").read_text().splitlines()] \
        == [1, 1]
    assert not (run / "lock").exists()
    refused = run_job(1, ["--resume", str(run), "--set", "train.epochs=2"])
    assert refused.returncode == 0, refused.stderr   # free again after the first job ended


def test_stale_lock_of_a_dead_job_is_taken_over(mnist_h5, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "stale"
    run.mkdir()
    (run / "lock").write_text(f"{__import__('socket').gethostname()} {dead.pid} 2026-01-01\n")
    done = run_job(1, small_run_args(mnist_h5, tmp_path, "stale", "--set", "train.epochs=1"))
    assert done.returncode == 0, done.stderr
    assert f"taking over the lock of job {dead.pid}" in done.stdout + done.stderr


def test_lock_of_another_host_is_refused(tmp_path):
    (tmp_path / "lock").write_text("elsewhere 12345 2026-01-01T00:00:00\n")
    before = snapshot(tmp_path)
    with pytest.raises(Exception, match="in use by job 12345 on elsewhere.*delete"):
        RunLock.acquire(tmp_path)
    assert snapshot(tmp_path) == before


def unreadable_lock(run, kind: str) -> None:
    lock = run / "lock"
    if kind == "folder":
        lock.mkdir()
    elif kind == "dangling link":
        lock.symlink_to(run / "gone")
    else:
        lock.write_bytes({"empty": b"", "garbage": b"not a lock at all\n",
                          "binary": b"\xff\xfe\x00\x01" * 8,
                          "huge pid": f"{socket.gethostname()} 99999999999999 x\n".encode()}[kind])


@pytest.mark.parametrize("kind", ["empty", "garbage", "binary", "folder", "dangling link",
                                  "huge pid"])
def test_an_unreadable_lock_is_one_line_naming_it_and_the_way_out(mnist_h5, tmp_path, kind):
    run = tmp_path / "r"
    run.mkdir()
    unreadable_lock(run, kind)
    before = snapshot(tmp_path)
    refused = run_job(1, small_run_args(mnist_h5, tmp_path, "r", "--set", "train.epochs=1"))
    assert_one_line_error(refused, f"{run / 'lock'}: lock file cannot be read", "delete it")
    assert snapshot(tmp_path) == before and (run / "lock").is_symlink() == (kind == "dangling link")
    told = subprocess.run([sys.executable, "-m", "dist.runlock", str(run)], capture_output=True,
                          text=True)
    assert "cannot be read" in told.stdout and told.returncode == 1


def test_a_full_disk_before_the_first_write_leaves_no_lock(mnist_h5, tmp_path):
    disk = mounted(tmp_path, "2m")
    try:
        with open(disk / "filler", "wb") as f:
            try:
                f.write(b"\0" * 10**7)
            except OSError:   # full: what we wanted
                pass
        args = small_run_args(mnist_h5, disk, "r", "--set", "train.epochs=1",
                              "--set", "train.steps_per_epoch=2")
        full = run_job(1, args)
        assert_one_line_error(full, f"{disk / 'r' / 'lock'}: cannot write the run folder's lock",
                              "No space left")
        assert not (disk / "r").exists()
        (disk / "filler").unlink()
        again = run_job(1, args)
        assert again.returncode == 0, again.stderr
    finally:
        subprocess.run(["umount", str(disk)], check=True)
