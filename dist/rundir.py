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

A job takes the folder's lock before it writes anything there, and removes the ``*.tmp`` of
checkpoint writes that were killed; the lock goes when the process exits.

Look at one:  python -m launch.report runs/<name>     (curves, mistakes, confusion matrix)
"""
from __future__ import annotations

import atexit
import json
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
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return run_dir


def reopen(run_dir: Path, completed_epochs: int) -> None:
    """A resumed run's folder: lock it, then drop the metric lines of epochs the checkpoint
    does not contain (they will be run again)."""
    lock(run_dir)
    path = run_dir / "metrics.jsonl"
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines()
                 if ln.strip() and json.loads(ln)["epoch"] <= completed_epochs]
        path.write_text("".join(ln + "\n" for ln in lines))


def auto_resume(cfg) -> Path | None:
    """``--resume auto``: run.name's folder if it holds a checkpoint (resume it), else None
    (start it)."""
    if not cfg.run.name:
        raise ExpectedError("--resume auto needs the run's name: --set run.name=...")
    run_dir = Path(cfg.run.dir) / cfg.run.name
    return run_dir if numbered_checkpoints(run_dir) else None


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


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
    (run_dir / "final.json").write_text(json.dumps(summary, indent=2) + "\n")
    test = "test set not evaluated (train.report_test = false)" \
        if summary["test_acc"] is None else f"has test accuracy {100 * summary['test_acc']:.2f}%"
    print(f"done in {summary['wall_seconds']:.0f}s: best.h5 (epoch {summary['best_epoch']}, "
          f"validation {100 * summary['best_val_acc']:.2f}%) {test}; run {run_dir}", flush=True)
