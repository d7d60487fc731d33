"""Checkpoints: one small HDF5 file per save, written atomically by rank 0, no pickle.

Layout of ``runs/<name>/ckpt-e003-s00000.h5`` (``h5ls -r`` shows it)::

    /theta     (P,) float32   all trainable parameters (the model's flat arena)
    /state     (S,) float32   batch-norm running statistics
    /velocity  (P,) float32   the optimizer's momentum
    attributes: format, version, epoch, step (position: next step to run is `step` of `epoch`),
                global_step, best_metric, best_epoch, bad_epochs (early-stopping counter),
                config (resolved config, JSON), spec (model spec, JSON), data_fingerprint,
                world_size, created

Because all randomness is keyed by (seed, epoch, global sample index), these counters are the
whole training state: no opaque RNG state, and resuming is exact.

Writing: to ``<file>.tmp`` in the same folder, flushed and fsynced, then ``os.replace`` — a
reader sees the old file or the new one, never half a file, even if the job is killed mid-write.
Loading validates everything and fails with one line naming the file.

Inspect one:  python -m dist.checkpoint runs/<name>/best.h5
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from core.spec import normalize_spec
from dist.errors import ExpectedError

FORMAT = "mpigrad-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    path: Path
    theta: np.ndarray
    state: np.ndarray
    velocity: np.ndarray
    epoch: int            # epoch in progress (or next to start)
    step: int             # steps of that epoch already done
    global_step: int
    best_metric: float    # best validation accuracy so far (-inf if none)
    best_epoch: int
    bad_epochs: int       # epochs since best (early stopping)
    config: dict
    spec: list
    data_fingerprint: str
    world_size: int


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt-e{epoch:03d}-s{step:05d}.h5"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> Path:
    """Atomically write ``ckpt`` to ``path`` (rank 0 only)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for name in ("theta", "state", "velocity"):
            f.create_dataset(name, data=np.asarray(getattr(ckpt, name), dtype=np.float32))
        f.attrs.update({
            "format": FORMAT, "version": VERSION,
            "epoch": ckpt.epoch, "step": ckpt.step, "global_step": ckpt.global_step,
            "best_metric": ckpt.best_metric, "best_epoch": ckpt.best_epoch,
            "bad_epochs": ckpt.bad_epochs,
            "config": json.dumps(ckpt.config), "spec": json.dumps(ckpt.spec),
            "data_fingerprint": ckpt.data_fingerprint, "world_size": ckpt.world_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        f.flush()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` numbered checkpoints (best.h5 is kept apart)."""
    for old in sorted(Path(run_dir).glob("ckpt-e*-s*.h5"))[:-keep_last]:
        old.unlink(missing_ok=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """``--resume`` accepts a run folder (its newest checkpoint) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("ckpt-e*-s*.h5"))
        if not found:
            raise ExpectedError(f"{path}: no checkpoints (ckpt-e*-s*.h5) in this run folder")
        return found[-1]
    if not path.exists():
        raise ExpectedError(f"{path}: no such checkpoint file or run folder")
    return path


def _describe_spec_difference(have: list, want: list) -> str:
    if len(have) != len(want):
        return f"{len(have)} layers vs {len(want)} in this run's model"
    for i, (a, b) in enumerate(zip(have, want)):
        if a != b:
            return f"layer {i}: {a} vs {b}"
    return "same layers"


def load_checkpoint(path: str | Path, expect_spec: list | None = None,
                    expect_sizes: tuple[int, int] | None = None,
                    expect_fingerprint: str | None = None) -> Checkpoint:
    """Read and validate a checkpoint; every problem is one ExpectedError naming the file."""
    path = resolve_checkpoint(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise ExpectedError(f"{path}: not an mpigrad checkpoint (no format attribute)")
            missing = [k for k in ("theta", "state", "velocity") if k not in f]
            if missing:
                raise ExpectedError(f"{path}: checkpoint lacks dataset(s) {', '.join(missing)}")
            arrays = {k: f[k][...] for k in ("theta", "state", "velocity")}
            a = dict(f.attrs)
            ckpt = Checkpoint(
                path=path, **arrays,
                epoch=int(a["epoch"]), step=int(a["step"]), global_step=int(a["global_step"]),
                best_metric=float(a["best_metric"]), best_epoch=int(a["best_epoch"]),
                bad_epochs=int(a["bad_epochs"]), config=json.loads(a["config"]),
                spec=json.loads(a["spec"]), data_fingerprint=str(a["data_fingerprint"]),
                world_size=int(a["world_size"]))
    except ExpectedError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ExpectedError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'unreadable'})") from None

    for name in ("theta", "state", "velocity"):
        arr = getattr(ckpt, name)
        if arr.ndim != 1 or arr.dtype != np.float32:
            raise ExpectedError(f"{path}: /{name} must be a 1-D float32 array, got "
                                f"{arr.dtype}{arr.shape}")
        if not np.isfinite(arr).all():
            raise ExpectedError(f"{path}: /{name} contains NaN or inf; refusing to resume from it")
    if ckpt.velocity.size != ckpt.theta.size:
        raise ExpectedError(f"{path}: /velocity has {ckpt.velocity.size} entries, /theta "
                            f"{ckpt.theta.size}")
    check_compatible(ckpt, expect_spec, expect_sizes, expect_fingerprint)
    return ckpt


def normalized(spec: list) -> list:
    """A saved spec with every default of today's layers filled in (a checkpoint written
    before a layer key existed lacks it), or the spec as it is if it no longer builds."""
    try:
        return normalize_spec(spec)
    except ValueError:
        return spec


def check_compatible(ckpt: Checkpoint, expect_spec: list | None = None,
                     expect_sizes: tuple[int, int] | None = None,
                     expect_fingerprint: str | None = None) -> None:
    """Refuse a checkpoint of another architecture or trained on other data."""
    path = ckpt.path
    if expect_spec is not None and normalized(ckpt.spec) != expect_spec:
        raise ExpectedError(f"{path}: checkpoint is of another architecture "
                            f"({_describe_spec_difference(ckpt.spec, expect_spec)})")
    if expect_sizes is not None and (ckpt.theta.size, ckpt.state.size) != tuple(expect_sizes):
        raise ExpectedError(f"{path}: parameter sizes {ckpt.theta.size}/{ckpt.state.size} do "
                            f"not match the model's {expect_sizes[0]}/{expect_sizes[1]}")
    if expect_fingerprint is not None and ckpt.data_fingerprint != expect_fingerprint:
        raise ExpectedError(f"{path}: trained on other data (fingerprint "
                            f"{ckpt.data_fingerprint[:12]}..., this data file "
                            f"{expect_fingerprint[:12]}...)")


def _main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m dist.checkpoint CKPT_OR_RUN_DIR", file=sys.stderr)
        return 2
    try:
        c = load_checkpoint(argv[0])
    except ExpectedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{c.path}: epoch {c.epoch} step {c.step} (global step {c.global_step}), "
          f"{c.theta.size} parameters, {c.state.size} state, best val acc {c.best_metric:.4f} "
          f"at epoch {c.best_epoch}, trained on {c.world_size} rank(s), preset "
          f"{c.config.get('preset', '?')!r}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
