"""Checkpoints: one small HDF5 file per save, written atomically by rank 0, no pickle.

Layout of ``runs/<name>/ckpt-e003-s00000.h5`` (``h5ls -r`` shows it)::

    /theta     (P,) float32   all trainable parameters (the model's flat arena)
    /state     (S,) float32   batch-norm running statistics
    /velocity  (P,) float32   the optimizer's momentum
    /ema_theta (P,) float32   the moving average of theta (only with optim.ema_decay > 0)
    /ema_state (S,) float32   its batch-norm statistics (core/ema.py)
    attributes: format, version, kind ("training"), epoch, step (position: next step to run is
                `step` of `epoch`), global_step, best_metric, best_epoch, bad_epochs
                (early-stopping counter), epoch_totals (the epoch's loss sum, correct, samples
                so far), config (resolved config, JSON), spec (model spec, JSON),
                data_fingerprint, world_size, created

Because all randomness is keyed by (seed, epoch, global sample index), these counters are the
whole training state: no opaque RNG state, and resuming is exact. A checkpoint written before
the moving average existed has no /ema_*; it loads as a run without one.

The model a checkpoint holds -- what evaluation, prediction and ensembles use -- is the
moving average when there is one, else theta (``model_weights``).

A **model file** (``kind = "model"``) is the compact form for shipping and for ensemble
snapshots: /theta and /state are the model's weights (the moving average's, if the run kept
one), float32, with the same attributes (config, spec, fingerprint, where it came from) and no
optimizer state, so it evaluates like a checkpoint but cannot be resumed:

    python -m dist.checkpoint export runs/<name> best-model.h5   # best.h5 of the run
    python -m dist.checkpoint export runs/<name>/ckpt-e012-s00000.h5 e12.h5

Writing: to ``<file>.tmp`` in the same folder, flushed and fsynced, then ``os.replace`` — a
reader sees the old file or the new one, never half a file, even if the job is killed mid-write.
``write_checkpoint`` is what the training loop calls; it makes sure a full disk cannot strand a
run: it checks the free space against the file's size first and, when short, deletes the
oldest numbered checkpoints *before* writing (never the newest that loads, nor one whose
deletion frees nothing); ``best.h5`` is a hard link to the numbered file (no space of its own);
a write that fails anyway is one line saying what was kept. Pruning to ``run.keep_last`` keeps
the file just written and the newest that loads, whatever their names. ``export`` never
writes over a training checkpoint or a run's ckpt-*/best.h5 name. ``*.tmp`` left by a killed
write are removed when the (locked) run folder is next opened.
Loading validates everything (shapes before reading, so a file that declares 10^12 floats is
refused, not allocated) and fails with one line naming the file. ``--resume RUN`` takes the
newest checkpoint of the folder that loads, never best.h5.

Inspect one:  python -m dist.checkpoint runs/<name>/best.h5
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from core.spec import normalize_spec
from dist.errors import ExpectedError
from dist.modelfile import CHECKSUM, check_contents, digest

FORMAT = "mpigrad-checkpoint"
VERSION = 1
TRAINING, MODEL = "training", "model"    # the two kinds of file


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
    epoch_totals: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss sum, correct,
    # samples of the epoch so far over all ranks, so that a resumed epoch is logged whole
    ema_theta: np.ndarray | None = None   # the moving average (core/ema.py), if kept
    ema_state: np.ndarray | None = None
    kind: str = TRAINING                  # MODEL: a model file, velocity None
    source: str = ""                      # a model file: what it was exported from


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt-e{epoch:03d}-s{step:05d}.h5"


SNAPSHOT_GLOB = "snapshot-c*.h5"


def snapshot_name(cycle: int) -> str:
    """The model file a cyclic schedule's run writes at the end of cycle `cycle` (1-based)."""
    return f"snapshot-c{cycle:02d}.h5"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


ARRAYS = ("theta", "state", "velocity", "ema_theta", "ema_state")


def save_checkpoint(path: Path, ckpt: Checkpoint) -> Path:
    """Atomically write ``ckpt`` to ``path`` (rank 0 only). Arrays that are None (no
    moving average; no velocity in a model file) are left out."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_hdf5(tmp, ckpt)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)   # half a file is of no use and takes the space we lack
        raise
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _write_hdf5(tmp: Path, ckpt: Checkpoint) -> None:
    # Uncompressed, model files too (trained float32 weights deflate by ~10% only, and the
    # loader checks each declared size against the file's bytes).
    with h5py.File(tmp, "w") as f:
        for name in ARRAYS:
            if getattr(ckpt, name) is not None:
                f.create_dataset(name, data=np.asarray(getattr(ckpt, name), dtype=np.float32))
        f.attrs.update({
            "format": FORMAT, "version": VERSION, "kind": ckpt.kind, "source": ckpt.source,
            "epoch": ckpt.epoch, "step": ckpt.step, "global_step": ckpt.global_step,
            "best_metric": ckpt.best_metric, "best_epoch": ckpt.best_epoch,
            "bad_epochs": ckpt.bad_epochs,
            "config": json.dumps(ckpt.config), "spec": json.dumps(ckpt.spec),
            "data_fingerprint": ckpt.data_fingerprint, "world_size": ckpt.world_size,
            "epoch_totals": np.asarray(ckpt.epoch_totals, np.float64),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        # Of what HDF5 gives back, as the loader will see it (dist/modelfile.py).
        f.attrs[CHECKSUM] = digest(dict(f.attrs), {k: f[k][...] for k in f})
        f.flush()


def prune_checkpoints(run_dir: Path, keep_last: int, written: Path | None = None) -> None:
    """Delete all but the newest ``keep_last`` numbered checkpoints (best.h5 is kept apart).

    Never deleted: ``written``, the checkpoint just written -- the run's position, even when
    files named later lie in the folder (a run resumed from an older checkpoint leaves the
    abandoned continuation's files until it overwrites them) -- and the newest one that loads
    (a damaged newest file must not cost the run every good one)."""
    found = numbered_checkpoints(run_dir)
    spared = {*found[-keep_last:], newest_loadable(found, known_good=written)}
    if written is not None:
        spared.add(Path(written))
    for old in found:
        if old not in spared:
            old.unlink(missing_ok=True)


def newest_loadable(paths: list[Path], known_good: Path | None = None) -> Path | None:
    """The last of ``paths`` (oldest first) that loads as a training checkpoint, or None.
    ``known_good`` (a file this job has just written) is taken as loading without reading it,
    so that in a run's usual course -- the file just written is the newest -- nothing is read."""
    for path in reversed(paths):
        if known_good is not None and path == Path(known_good):
            return path
        try:
            load_checkpoint(path)
            return path
        except ExpectedError:
            continue
    return None


def _frees_nothing(path: Path) -> bool:
    """Deleting ``path`` frees no space: another name (best.h5) holds the same bytes."""
    try:
        return path.stat().st_nlink > 1
    except OSError:
        return True


def numbered_checkpoints(run_dir: Path) -> list[Path]:
    """The run's ckpt-eEEE-sSSSSS.h5 files, oldest first (the names sort by position)."""
    return sorted(Path(run_dir).glob("ckpt-e*-s*.h5"))


# HDF5's own bytes besides the arrays and the two JSON attributes (superblock, object headers,
# B-trees): measured 5-6 KiB for our three datasets; twice that as margin.
HDF5_OVERHEAD = 12 * 1024


def expected_size(ckpt: Checkpoint) -> int:
    """Bytes the file of ``ckpt`` will take (an upper bound)."""
    arrays = sum(np.asarray(getattr(ckpt, k)).size * 4 for k in ("theta", "state", "velocity"))
    return arrays + len(json.dumps(ckpt.config)) + len(json.dumps(ckpt.spec)) + HDF5_OVERHEAD


def write_checkpoint(run_dir: Path, ckpt: Checkpoint, keep_last: int, best: bool) -> None:
    """Write ``ckpt`` (and point best.h5 at it) so that a full disk cannot strand the run.

    1. Room: if the file system has less free space than the file needs, delete the oldest
       numbered checkpoints first -- but never the newest that loads (the run's way back),
       nor one whose deletion frees nothing (hard-linked to best.h5).
    2. Write atomically; then ``best.h5`` becomes a second name of the same file (a hard link:
       no space of its own; a copy where the file system has no hard links).
    3. Prune to the newest ``keep_last``.
    Any failure (ENOSPC, EDQUOT, EIO, read-only) is one ExpectedError naming what was kept."""
    run_dir, path = Path(run_dir), Path(ckpt.path)
    need = expected_size(ckpt)
    if shutil.disk_usage(run_dir).free < need:
        _make_room(run_dir, path, need)
    free = shutil.disk_usage(run_dir).free
    try:
        if free < need:
            raise OSError(errno.ENOSPC, f"needs {need / 1e6:.1f} MB, {free / 1e6:.1f} MB free")
        save_checkpoint(path, ckpt)
        if best:
            _link_atomically(path, run_dir / "best.h5")
    except OSError as err:
        kept = [p.name for p in numbered_checkpoints(run_dir) if p != path]
        kept += ["best.h5"] if (run_dir / "best.h5").exists() else []
        raise ExpectedError(
            f"{path}: cannot write checkpoint ({os_reason(err)}); kept "
            f"{', '.join(kept) or 'no checkpoint'} in {run_dir}"
            + (f"; free space, then continue with --resume {run_dir}" if kept else ""),
            everywhere=True) from None
    prune_checkpoints(run_dir, keep_last, written=path)


def _make_room(run_dir: Path, path: Path, need: int) -> None:
    """Delete the oldest numbered checkpoints until ``need`` bytes are free, sparing those
    the run may need should this write fail: the newest that loads before ``path`` in the run
    (its way back), the newest that loads at all, and those whose deletion frees nothing
    (hard-linked to best.h5)."""
    older = [p for p in numbered_checkpoints(run_dir) if p != path]
    spared = {newest_loadable([p for p in older if p.name < path.name]),
              newest_loadable(older)}
    for old in older:
        if shutil.disk_usage(run_dir).free >= need:
            return
        if old not in spared and not _frees_nothing(old):
            old.unlink(missing_ok=True)


def os_reason(err: OSError) -> str:
    """An OSError in a few words: "No space left on device" (HDF5's own message spans lines
    and names its buffers)."""
    if err.errno:
        return os.strerror(err.errno)
    return (str(err).splitlines() or ["unknown error"])[0]


def _link_atomically(target: Path, name: Path) -> None:
    """Make ``name`` a hard link to ``target``, replacing it atomically (copy if unsupported)."""
    tmp = name.with_name(name.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
            raise
        shutil.copyfile(target, tmp)
    os.replace(tmp, name)
    _fsync_dir(name.parent)


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete ``*.tmp`` left by checkpoint writes that were killed. Only safe while this job
    holds the run folder's lock (dist/runlock.py): nobody else is writing there."""
    stale = sorted(Path(run_dir).glob("*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def resolve_checkpoint(path: str | Path) -> Path:
    """``--resume`` accepts a run folder (its newest checkpoint) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        found = numbered_checkpoints(path)
        if not found:
            raise ExpectedError(f"{path}: no checkpoints (ckpt-e*-s*.h5) in this run folder")
        return found[-1]
    if not path.exists():
        raise ExpectedError(f"{path}: no such checkpoint file or run folder")
    return path


def load_newest(run_dir: str | Path, report=print) -> Checkpoint:
    """The newest numbered checkpoint of a run folder that loads (a file: that file).

    A newer one that does not load (truncated by a full disk, damaged) is skipped with one
    line through ``report``; best.h5 is never needed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return load_checkpoint(run_dir)
    candidates = numbered_checkpoints(run_dir)
    if not candidates:
        raise ExpectedError(f"{run_dir}: no checkpoints (ckpt-e*-s*.h5) in this run folder")
    for path in reversed(candidates):
        try:
            return load_checkpoint(path)
        except ExpectedError as err:
            if path == candidates[0]:
                raise ExpectedError(str(err) if len(candidates) == 1 else
                                    f"{run_dir}: none of {len(candidates)} checkpoints loads; "
                                    f"the oldest: {err}") from None
            report(f"warning: skipping {err}")
    raise AssertionError("unreachable")


def _describe_spec_difference(have: list, want: list) -> str:
    if len(have) != len(want):
        return f"{len(have)} layers vs {len(want)} in this run's model"
    for i, (a, b) in enumerate(zip(have, want)):
        if a != b:
            return f"layer {i}: {a} vs {b}"
    return "same layers"


def load_checkpoint(path: str | Path, expect_spec: list | None = None,
                    expect_sizes: tuple[int, int] | None = None,
                    expect_fingerprint: str | None = None,
                    resumable: bool = True) -> Checkpoint:
    """Read and validate a checkpoint; every problem is one ExpectedError naming the file.
    With ``resumable=False`` (evaluation, prediction, ensembles) a model file is accepted too."""
    path = resolve_checkpoint(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise ExpectedError(f"{path}: not an mpigrad checkpoint (no format attribute)")
            kind = str(f.attrs.get("kind", TRAINING))   # files before model files: training
            if kind not in (TRAINING, MODEL):
                raise ExpectedError(f"{path}: unknown checkpoint kind {kind!r}")
            if kind == MODEL and resumable:
                raise ExpectedError(f"{path}: a model file (weights only, no optimizer state) "
                                    "cannot be resumed; resume from the run's ckpt-*.h5")
            needed = ("theta", "state") + (("velocity",) if kind == TRAINING else ())
            missing = [k for k in needed if k not in f]
            if missing:
                raise ExpectedError(f"{path}: checkpoint lacks dataset(s) {', '.join(missing)}")
            if ("ema_theta" in f) != ("ema_state" in f):
                raise ExpectedError(f"{path}: checkpoint has one of /ema_theta and /ema_state "
                                    "without the other")
            present = [k for k in ARRAYS if k in f]
            for k in present:
                _check_declared_shape(path, k, f[k])
            arrays = {k: f[k][...] if k in f else None for k in ARRAYS}
            attrs = dict(f.attrs)
            ckpt = Checkpoint(path=path, **arrays, **_attributes(path, attrs),
                              kind=kind, source=str(f.attrs.get("source", "")))
    except ExpectedError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
        raise ExpectedError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'unreadable'})") from None

    for name, like in (("velocity", "theta"), ("ema_theta", "theta"), ("ema_state", "state")):
        arr, ref = getattr(ckpt, name), getattr(ckpt, like)
        if arr is not None and arr.size != ref.size:
            raise ExpectedError(f"{path}: /{name} has {arr.size} entries, /{like} {ref.size}")
    # The same contract for every reader (dist/modelfile.py): spec against theta, loss and
    # layer names, batch-norm statistics, finite arrays, the fingerprint's form, the checksum.
    check_contents(path, ckpt.spec, ckpt.config, ckpt.data_fingerprint, arrays, attrs)
    check_compatible(ckpt, expect_spec, expect_sizes, expect_fingerprint)
    return ckpt


def _check_declared_shape(path: Path, name: str, dataset) -> None:
    """Refuse a dataset before reading it: 1-D float32, and no more values than the file
    has bytes for (we write uncompressed: a larger declared shape would be read as 10^12
    fill values, an allocation that ends in MemoryError)."""
    if dataset.ndim != 1 or dataset.dtype != np.float32:
        raise ExpectedError(f"{path}: /{name} must be a 1-D float32 array, got "
                            f"{dataset.dtype}{dataset.shape}")
    if dataset.size * 4 > path.stat().st_size:
        raise ExpectedError(f"{path}: /{name} declares {dataset.size:,} values, more than the "
                            f"file's {path.stat().st_size:,} bytes hold")


def _attributes(path: Path, a: dict) -> dict:
    """The counters and metadata, each checked: a negative epoch must not reach
    rundir.reopen (it would empty metrics.jsonl), a config must be a table."""
    a = {k: v.item() if isinstance(v, np.generic) else v for k, v in a.items()}
    missing = [k for k in ("epoch", "step", "global_step", "best_metric", "best_epoch",
                           "bad_epochs", "config", "spec", "data_fingerprint", "world_size")
               if k not in a]
    if missing:
        raise ExpectedError(f"{path}: checkpoint lacks attribute(s) {', '.join(missing)}")

    def integer(key: str, low: int) -> int:
        value = a[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ExpectedError(f"{path}: attribute {key}={value!r} must be an integer >= {low}")
        return int(value)

    def text(key: str) -> str:
        value = a[key]
        return value.decode() if isinstance(value, bytes) else str(value)

    def from_json(key: str):
        try:
            return json.loads(text(key))
        except ValueError as err:   # the name of the attribute says more than the parser
            raise ExpectedError(f"{path}: corrupt or truncated checkpoint (attribute {key} is "
                                f"not JSON: {err})") from None

    best = a["best_metric"]
    if not isinstance(best, (float, int)) or math.isnan(best) or best > 1:
        raise ExpectedError(f"{path}: attribute best_metric={best!r} must be an accuracy or -inf")
    config, spec = from_json("config"), from_json("spec")
    totals = [float(v) for v in np.ravel(a.get("epoch_totals", (0.0, 0.0, 0.0)))]  # older: none
    if len(totals) != 3 or not all(math.isfinite(v) and v >= 0 for v in totals[1:]):
        raise ExpectedError(f"{path}: attribute epoch_totals={totals!r} must be 3 numbers")
    if not isinstance(config, dict) or not isinstance(spec, list):
        raise ExpectedError(f"{path}: attributes config/spec must be a JSON table and list")
    out = dict(epoch=integer("epoch", 0), step=integer("step", 0),
               global_step=integer("global_step", 0), best_metric=float(best),
               best_epoch=integer("best_epoch", -1), bad_epochs=integer("bad_epochs", 0),
               config=config, spec=spec, data_fingerprint=text("data_fingerprint"),
               world_size=integer("world_size", 1), epoch_totals=totals)
    if out["global_step"] < out["step"] or out["best_epoch"] > out["epoch"]:
        raise ExpectedError(f"{path}: attributes disagree (step {out['step']} > global_step "
                            f"{out['global_step']}, or best_epoch after epoch)")
    return out


def model_weights(ckpt: Checkpoint, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(theta, state) of the model a checkpoint holds: the moving average if it has one
    (unless `raw`: the trained weights themselves)."""
    if ckpt.ema_theta is not None and not raw:
        return ckpt.ema_theta, ckpt.ema_state
    return ckpt.theta, ckpt.state


def model_source(path: str | Path) -> Path:
    """What `export` reads: a run folder means its best.h5 (the model validation chose), or
    its newest checkpoint if it has no best.h5; a file is itself."""
    path = Path(path)
    if path.is_dir() and (path / "best.h5").is_file():
        return path / "best.h5"
    return resolve_checkpoint(path)


def export_model(source: str | Path, out: str | Path, raw: bool = False) -> Checkpoint:
    """Write the compact model file of a checkpoint or run folder: the model's float32
    weights and batch-norm statistics (the moving average's when there is one, unless `raw`),
    its config, spec and data fingerprint; no optimizer state. Refuses to overwrite the
    source."""
    src = model_source(source)
    ckpt = load_checkpoint(src, resumable=False)
    out = Path(out)
    _check_export_target(out, src)
    model = as_model(ckpt, out, ckpt.source or str(src), raw)
    write_model_file(out, model, kept=f"{src} is unchanged")
    return model


def _check_export_target(out: Path, src: Path) -> None:
    """A model file must not take the place of what a run resumes or reports from: the
    source itself, a training checkpoint, or a run folder's best.h5 or numbered name."""
    if not out.parent.is_dir():
        raise ExpectedError(f"{out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise ExpectedError(f"{out}: is a folder; name the model file to write")
    if out.exists() and os.path.samefile(out, src):
        raise ExpectedError(f"{out}: is the checkpoint being exported; choose another name")
    if out.name == "best.h5" or out.match("ckpt-e*-s*.h5") or _is_training_checkpoint(out):
        raise ExpectedError(f"{out}: the name or file of a run's training checkpoint; a model "
                            f"file there would replace what --resume continues from: choose "
                            f"another name")


def _is_training_checkpoint(path: Path) -> bool:
    """Whether ``path`` is an existing mpigrad file of kind "training" (not loaded whole)."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT and \
                str(f.attrs.get("kind", TRAINING)) == TRAINING
    except (OSError, ValueError):
        return False


def write_model_file(path: Path, model: Checkpoint, kept: str) -> Path:
    """save_checkpoint for a model file (export, a cyclic run's snapshots): a full disk or any
    other write error is one ExpectedError saying that nothing was written and what was kept."""
    try:
        return save_checkpoint(path, model)
    except OSError as err:
        raise ExpectedError(f"{path}: cannot write the model file ({os_reason(err)}); "
                            f"nothing written, {kept}", everywhere=True) from None


def as_model(ckpt: Checkpoint, path: Path, source: str, raw: bool = False) -> Checkpoint:
    """The model file of a checkpoint (to save at `path`): the model's weights as /theta and
    /state, everything else about the run kept, no optimizer state."""
    theta, state = model_weights(ckpt, raw)
    return dataclasses.replace(ckpt, path=Path(path), theta=theta, state=state, velocity=None,
                               ema_theta=None, ema_state=None, kind=MODEL, source=source)


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


USAGE = ("usage: python -m dist.checkpoint CKPT_OR_RUN_DIR            (describe it)\n"
         "       python -m dist.checkpoint export [--raw] CKPT_OR_RUN_DIR OUT.h5   (compact "
         "model file;\n"
         "       --raw: the trained weights, not their moving average)")


def _main(argv: list[str]) -> int:
    raw = argv[:2] == ["export", "--raw"]
    argv = ["export", *argv[2:]] if raw else argv
    export = len(argv) == 3 and argv[0] == "export"
    if not (export or len(argv) == 1) or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        if export:
            c = export_model(argv[1], argv[2], raw)
            size = Path(argv[2]).stat().st_size
            print(f"{argv[2]}: model of {c.source} ({c.theta.size} parameters, "
                  f"{c.state.size} state, {size / 2 ** 20:.2f} MiB)")
            return 0
        c = load_checkpoint(argv[0], resumable=False)
    except ExpectedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kind = f"model file exported from {c.source}" if c.kind == MODEL else \
        "with a moving average of the weights" if c.ema_theta is not None else "training"
    print(f"{c.path}: epoch {c.epoch} step {c.step} (global step {c.global_step}), "
          f"{c.theta.size} parameters, {c.state.size} state, best val acc {c.best_metric:.4f} "
          f"at epoch {c.best_epoch}, trained on {c.world_size} rank(s), preset "
          f"{c.config.get('preset', '?')!r}; {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
