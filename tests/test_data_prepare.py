"""`python -m data.prepare` as a user runs it, and `ensure_dataset` as the trainer calls it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.errors import DataError
from data.hdf5 import open_mnist
from data.prepare import default_path, ensure_dataset

REPO = Path(__file__).resolve().parents[1]


def run_prepare(*args, env_extra=None, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MPIGRAD_DATA", "MPIGRAD_MNIST_SOURCE")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "data.prepare", *map(str, args)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.delenv("MPIGRAD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_path() == tmp_path / "mpigrad" / "mnist.h5"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_path() == Path.home() / ".cache" / "mpigrad" / "mnist.h5"
    monkeypatch.setenv("MPIGRAD_DATA", str(tmp_path / "x.h5"))
    assert default_path() == tmp_path / "x.h5"


def test_prepare_then_noop(tmp_path, mnist_idx_dir):
    first = run_prepare("--source", mnist_idx_dir, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "cache" / "mpigrad" / "mnist.h5"           # the default location
    assert first.stdout.strip() == str(out)
    assert f"using folder {Path(mnist_idx_dir).resolve()}" in first.stderr
    assert open_mnist(out).fingerprint.startswith("474311ef")
    stamp = out.stat().st_mtime_ns

    second = run_prepare(tmp_path=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "already prepared" in second.stderr and second.stdout.strip() == str(out)
    assert out.stat().st_mtime_ns == stamp
    assert [p.name for p in out.parent.iterdir()] == ["mnist.h5"]


def test_killed_preparation_leaves_nothing_behind_after_the_next_run(tmp_path, mnist_idx_dir):
    """SIGKILL mid-write leaves the hidden temporary (nothing can run then); the next run of
    data.prepare removes it (its process is dead) and writes the file."""
    out = tmp_path / "m.h5"
    env = {k: v for k, v in os.environ.items() if k not in ("MPIGRAD_DATA",)}
    env["PYTHONPATH"] = str(REPO)
    job = subprocess.Popen([sys.executable, "-m", "data.prepare", "--source", str(mnist_idx_dir),
                            "--out", str(out), "--quiet"], env=env)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".m.h5.*.tmp")):
        assert job.poll() is None and time.monotonic() < deadline, "no temporary appeared"
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert list(tmp_path.glob(".m.h5.*.tmp")) and not out.exists()
    again = run_prepare("--source", mnist_idx_dir, "--out", out, tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "left by a preparation that was killed" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m.h5")) == []
    assert out.is_file()


def test_bad_source_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_prepare("--source", empty, "--out", tmp_path / "m.h5", tmp_path=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(empty) in errors[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "m.h5").exists()


def test_not_genuine_source_folder(tmp_path, idx_folder):
    folder, _, _ = idx_folder()
    done = run_prepare("--source", folder, "--out", tmp_path / "m.h5", tmp_path=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith(f"error: {folder}/train-images-idx3-ubyte.gz: "
                                                   f"SHA-256")


def test_invalid_existing_file_is_kept(tmp_path, mnist_idx_dir):
    out = tmp_path / "m.h5"
    out.write_bytes(b"precious, or at least not ours")
    done = run_prepare("--source", mnist_idx_dir, "--out", out, tmp_path=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {out}: not a readable HDF5 file")
    assert "--force" in done.stderr and len(done.stderr.splitlines()) == 1
    assert out.read_bytes() == b"precious, or at least not ours"

    forced = run_prepare("--source", mnist_idx_dir, "--out", out, "--force", tmp_path=tmp_path)
    assert forced.returncode == 0, forced.stderr
    open_mnist(out)


def test_env_source_and_out(tmp_path, mnist_idx_dir):
    out = tmp_path / "elsewhere" / "data.h5"
    done = run_prepare("--quiet", tmp_path=tmp_path, env_extra={
        "MPIGRAD_DATA": str(out), "MPIGRAD_MNIST_SOURCE": str(mnist_idx_dir)})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout.strip() == str(out)
    assert open_mnist(out).source == f"folder {Path(mnist_idx_dir).resolve()}"


def test_ensure_dataset_validates_existing(small_h5, mnist_h5):
    assert ensure_dataset(mnist_h5, quiet=True) == mnist_h5
    with pytest.raises(DataError, match="expected \\(60000, 28, 28\\).*--force"):
        ensure_dataset(small_h5, quiet=True)
