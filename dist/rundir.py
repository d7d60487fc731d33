"""The run folder: what a training run writes, and nothing else. Rank 0 alone calls these.

    runs/<name>/
        config.json           the resolved config (``--config runs/<name>/config.json`` repeats it)
        metrics.jsonl         one JSON line per epoch: losses, accuracies, lr, images/s, timings
                              (with optim.ema_decay, val_* are the moving average's and
                              raw_val_* the raw weights')
        snapshot-cCC.h5       schedule.kind = 'cyclic': the model at the end of cycle CC
        ckpt-eEEE-sSSSSS.h5   the newest run.keep_last checkpoints (dist/checkpoint.py)
        best.h5               the checkpoint of the best validation accuracy so far
        final.json            the result: best.h5's test accuracy (null with
                              train.report_test = false), wall time
        lock                  host and pid of the job using the folder (dist/runlock.py)
        abandoned-<time>/     checkpoints set aside by a resume from an older one (below)

A job takes the folder's lock before it writes anything there, and removes the ``*.tmp`` of
checkpoint writes that were killed; the lock goes when the process exits. Every file here is
written whole or not at all (a temporary, then a rename); a full disk is one line saying what
was kept.

Resuming from a checkpoint older than the folder's newest abandons the continuation that
followed it: its metric lines are dropped (they will be run again) and its later checkpoints
(and its final.json) are moved into ``abandoned-<time>/`` -- kept, but out of the way of
``--resume RUN`` (the newest checkpoint) and of pruning, which would otherwise take them for
the run's newest.

Look at one:  python -m launch.report runs/<name>     (curves, mistakes, confusion matrix)
"""
from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

from dist.checkpoint import numbered_checkpoints, remove_temporaries
from dist.errors import ExpectedError
from dist.runlock import RunLock


def lock(run_dir: Path) -> None:
    """Take the folder's lock (one line if another job holds it), released when this process
    exits; then remove what killed checkpoint writes left (nobody else writes here now)."""
    atexit.register(RunLock.acquire(run_dir).release)
    remove_temporaries(run_dir)


def create(cfg) -> Path:
    """Make runs/<name> for a fresh run and write config.json; refuse to reuse a folder that
    holds a run (checkpoints or metrics). Sets ``cfg.run.name`` when it was left empty."""
    name = cfg.run.name or f"{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.dir) / name
    lock(run_dir)
    if any(run_dir.glob("ckpt-*.h5")) or (run_dir / "metrics.jsonl").exists():
        raise ExpectedError(f"{run_dir}: run folder already exists; continue it with --resume "
                            f"{run_dir} or choose another --set run.name=...")
    cfg.run.name = name
    write_whole(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n",
                kept="nothing else written; free space and start again")
    return run_dir


def write_whole(path: Path, text: str, kept: str) -> None:
    """Write ``path`` whole or not at all (a reader, or a job killed meanwhile, never leaves
    half a file); a failure (a full disk) is one ExpectedError ending with ``kept``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ExpectedError(f"{path}: cannot write ({err.strerror or err}); {kept}",
                            everywhere=True) from None
    except BaseException:   # a stop signal: the old file stays as it was
        tmp.unlink(missing_ok=True)
        raise


def reopen(run_dir: Path, completed_epochs: int, resumed_from: Path | None = None) -> None:
    """A resumed run's folder: lock it, set aside the checkpoints after ``resumed_from`` (see
    above), then drop the metric lines of epochs the checkpoint does not contain (they will be
    run again)."""
    lock(run_dir)
    if resumed_from is not None:
        set_aside_later(run_dir, Path(resumed_from))
    path = run_dir / "metrics.jsonl"
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines()
                 if ln.strip() and json.loads(ln)["epoch"] <= completed_epochs]
        write_whole(path, "".join(ln + "\n" for ln in lines),
                    kept=f"{path.name} and the checkpoints are as they were")


def set_aside_later(run_dir: Path, resumed_from: Path) -> None:
    """Move the numbered checkpoints named after ``resumed_from`` (a later position of the
    run) into abandoned-<time>/, with a note; nothing is deleted."""
    later = [p for p in numbered_checkpoints(run_dir) if p.name > resumed_from.name]
    if resumed_from.parent.resolve() != run_dir.resolve() or not later:
        return
    aside = run_dir / f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(exist_ok=True)
    # final.json too: it is the result of that continuation, and this one is not complete.
    moved = later + [p for p in (run_dir / "final.json",) if p.is_file()]
    for path in moved:
        os.replace(path, aside / path.name)   # the same file system: no space needed
    print(f"note: {run_dir}: resuming from {resumed_from.name}; the {len(later)} later "
          f"checkpoint(s) of the continuation it replaces are kept in {aside}", flush=True)


def check_same_preset(resume, preset: str) -> None:
    """``--resume auto --preset P`` on a folder holding a run of another preset: refuse, rather
    than continue the old run as if it were P."""
    had = resume.config.get("preset", "")
    if had != preset:
        run_dir = resume.path.parent
        raise ExpectedError(f"{run_dir}: holds a run of preset {had!r}, not {preset!r}; "
                            f"continue it without --preset/--config, or choose another "
                            f"run.name")


def already_complete(resume, cfg) -> bool:
    """A resumed run with nothing left to train (every epoch, or stopped early) and its
    final.json written: say so and leave it as it is (True)."""
    run_dir = resume.path.parent
    t = cfg.train
    trained = resume.step == 0 and (resume.epoch >= t.epochs or bool(
        t.patience and resume.bad_epochs >= t.patience))
    if not (trained and (run_dir / "final.json").is_file()):
        return False
    print(f"{run_dir}: complete already (final.json); nothing to do. To train longer, "
          f"--resume {run_dir} --set train.epochs=N with N > {resume.epoch}", flush=True)
    return True


def auto_resume(cfg) -> Path | None:
    """``--resume auto``: run.name's folder if it holds a checkpoint (resume it), else None
    (start it)."""
    if not cfg.run.name:
        raise ExpectedError("--resume auto needs the run's name: --set run.name=...")
    run_dir = Path(cfg.run.dir) / cfg.run.name
    return run_dir if numbered_checkpoints(run_dir) else None


def append_metrics(run_dir: Path, record: dict) -> None:
    """One line per epoch. On a full disk: one line (the epoch's checkpoint is written; a
    resume from it would not run the epoch again, so its line would be missing)."""
    path = run_dir / "metrics.jsonl"
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
    except OSError as err:
        try:
            os.truncate(path, size)   # no half line for the next reader
        except OSError:
            pass
        raise ExpectedError(
            f"{path}: cannot append epoch {record['epoch']} ({err.strerror or err}); the "
            f"epoch's checkpoint was written; free space, then --resume {run_dir} (its "
            f"metrics line will be missing)", everywhere=True) from None


def epoch_line(record: dict, epochs: int) -> str:
    """The line printed after each epoch, from its metrics record."""
    r, s = record, record["seconds"]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    return (f"epoch {r['epoch']}/{epochs}  train loss {r['train_loss']:.4f} "
            f"acc {pct(r['train_acc'])}"
            + (f"  val loss {r['val_loss']:.4f} acc {pct(r['val_acc'])}"
               if r["val_acc"] is not None else "")
            + (f" (raw weights {pct(r['raw_val_acc'])})" if "raw_val_acc" in r else "")
            + (f"  test acc {pct(r['test_acc'])}" if r["test_acc"] is not None else "")
            + f"  lr {r['lr']:.4g}  {r['images_per_s']:.0f} img/s  (compute "
            f"{s['compute']:.1f}s, allreduce {s['allreduce']:.1f}s, data {s['data']:.1f}s, "
            f"eval {s['eval']:.1f}s)" + ("  early stop" if r["early_stop"] else ""))


def write_final(run_dir: Path, summary: dict) -> None:
    """final.json, and the line that ends a run."""
    write_whole(run_dir / "final.json", json.dumps(summary, indent=2) + "\n",
                kept=f"training is complete and its checkpoints are kept; free space, then "
                     f"--resume {run_dir} writes it")
    test = "test set not evaluated (train.report_test = false)" \
        if summary["test_acc"] is None else f"has test accuracy {100 * summary['test_acc']:.2f}%"
    print(f"done in {summary['wall_seconds']:.0f}s: best.h5 (epoch {summary['best_epoch']}, "
          f"validation {100 * summary['best_val_acc']:.2f}%) {test}; run {run_dir}", flush=True)
