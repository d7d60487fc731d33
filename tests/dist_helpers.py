"""Helpers for the tests that start real training jobs (`python -m dist.train`, `mpirun -n N`).

Every job runs as a subprocess with a timeout, so a hang fails the test instead of blocking CI.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MPIRUN = str(Path(sys.executable).parent / "mpirun") \
    if (Path(sys.executable).parent / "mpirun").exists() else shutil.which("mpirun")


def mpirun_flags(mpirun: str | None = MPIRUN) -> list[str]:
    """Open MPI's mpirun refuses more ranks than cores (the tests start 4 ranks on 2-core
    machines) and refuses to run as root (CI): the flags that allow both, as MPICH does."""
    if mpirun is None:
        return []
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" not in version:
        return []
    return ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


MPIRUN_CMD = [MPIRUN, *mpirun_flags()]

# A small network with every kind of randomness and cross-rank coupling the invariants care
# about: batch norm (synchronised statistics) and dropout (masks keyed by global sample index).
SMALL_LAYERS = ('[{type="conv",out=8,kernel=3,pad=1},{type="batchnorm"},{type="relu"},'
                '{type="maxpool",kernel=2},{type="flatten"},{type="dense",out=32},'
                '{type="batchnorm"},{type="relu"},{type="dropout",p=0.3},{type="dense",out=10}]')


def small_run_args(data: Path, run_dir: Path, name: str, *extra: str) -> list[str]:
    """Arguments of a short run: 2 epochs of 12 steps, global batch 62 (uneven over 4 ranks).
    Augmentation is off (the cnn preset turns it on): it is rank-independent by construction
    (tests/test_data_pipeline.py), and these runs are short enough without it to learn fast."""
    return ["--preset", "cnn", "--set", f"model.layers={SMALL_LAYERS}", "--set", "data.augment=false",
            "--set", f"data.path={data}", "--set", "data.val_size=1000",
            "--set", "train.batch_size=62", "--set", "train.epochs=2",
            "--set", "train.steps_per_epoch=12", "--set", "train.eval_test_every=0",
            "--set", "optim.lr=0.05", "--set", "run.threads=1", "--set", "run.progress=false",
            "--set", f"run.dir={run_dir}", "--set", f"run.name={name}", *extra]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("MPIGRAD_DATA", None)
    return e


def train_command(ranks: int, args: list[str], module: str = "dist.train") -> list[str]:
    """``python -m dist.train`` for 1 rank (the debugging mode), ``mpirun -n N ...`` otherwise."""
    cmd = [sys.executable, "-m", module, *args] if module.startswith("dist.") \
        else [sys.executable, module, *args]
    return cmd if ranks == 1 else [*MPIRUN_CMD, "-n", str(ranks), *cmd]


def run_job(ranks: int, args: list[str], timeout: float = 120, module: str = "dist.train"):
    return subprocess.run(train_command(ranks, args, module), cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def start_job(ranks: int, args: list[str], module: str = "dist.train") -> subprocess.Popen:
    return subprocess.Popen(train_command(ranks, args, module), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def theta_of(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["theta"][...]


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def rank_pids(marker: str) -> list[int]:
    """PIDs of the MPI ranks (children of MPICH hydra's proxy, or of Open MPI's prterun/prted)
    whose command line contains marker."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = (Path("/proc") / str(ppid) / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        if marker in cmdline and ("proxy" in parent or parent in ("prterun", "prted")):
            pids.append(int(proc.name))
    return sorted(pids)


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of a job's stderr, less the box Open MPI's launcher adds when a rank
    exits non-zero ("prterun detected that one or more processes exited with non-zero status",
    between two lines of dashes): that one is the launcher's, not mpigrad's."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    rule = "-" * 74
    while rule in lines:
        start = lines.index(rule)
        end = lines.index(rule, start + 1) if rule in lines[start + 1:] else len(lines) - 1
        if not any("prterun detected" in ln for ln in lines[start:end]):
            break
        del lines[start:end + 1]
    return lines


def snapshot(folder):
    """Every file under ``folder`` with its bytes: equal snapshots mean nothing changed."""
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_one_line_error(result, *fragments):
    """Exit code 2 and exactly one line on stderr, ``error: ...`` containing each fragment."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
