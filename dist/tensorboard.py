"""TensorBoard curves of a run: each epoch's metrics record written as TensorBoard scalars.

With ``--set run.tensorboard=true``, rank 0 writes event files into the run folder, beside
metrics.jsonl, through tensorboardX (a maintained writer that needs neither torch nor
tensorflow; ``pip install 'mpigrad[tensorboard]'``). Then

    tensorboard --logdir runs            # every run's curves side by side, one per run folder

Tags (step = epoch, as in metrics.jsonl; a resumed run continues its curves):

    loss/train  loss/val  loss/test            accuracy/train  accuracy/val  accuracy/test
    learning_rate  images_per_s                seconds/compute  seconds/allreduce
    seconds/data  seconds/eval  seconds/checkpoint  seconds/train  seconds/wall

A value a record does not have (no validation set; no test this epoch) is left out. Used by
dist/train.py; on its own, replay a finished run's metrics.jsonl:

    python -m dist.tensorboard runs/<name>
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dist.errors import ExpectedError

# metrics.jsonl key -> TensorBoard tag; "seconds" (a dict) becomes seconds/<part>
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
        "train_acc": "accuracy/train", "val_acc": "accuracy/val", "test_acc": "accuracy/test",
        "lr": "learning_rate", "images_per_s": "images_per_s"}


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard scalars of one metrics record: {tag: value}, missing values left out."""
    values = {tag: record.get(key) for key, tag in TAGS.items()}
    values.update({f"seconds/{part}": s for part, s in record.get("seconds", {}).items()})
    return {tag: float(v) for tag, v in values.items() if v is not None}


class TensorBoardLog:
    """An event file in ``run_dir``; ``write(record)`` once per epoch, then ``close()``."""

    def __init__(self, run_dir: str | Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ExpectedError("run.tensorboard=true: the TensorBoard writer is not installed "
                                "(pip install 'mpigrad[tensorboard]', or tensorboardX)") from None
        self.run_dir = Path(run_dir)
        try:
            self.writer = SummaryWriter(logdir=str(run_dir))
        except OSError as err:
            raise ExpectedError(self._cannot(err, "no curve written")) from None

    def write(self, record: dict) -> None:
        try:
            for tag, value in scalars(record).items():
                self.writer.add_scalar(tag, value, global_step=record["epoch"])
            self.writer.flush()   # the curve is on disk when the epoch's line is printed
        except OSError as err:
            self._abandon()
            kept = f"the curves up to epoch {record['epoch'] - 1} are kept" \
                if record["epoch"] > 1 else "no curve written"
            raise ExpectedError(self._cannot(err, kept),
                                everywhere=True) from None

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError as err:
            self._abandon()
            raise ExpectedError(self._cannot(err, "the curves written so far are kept"),
                                everywhere=True) from None

    def _cannot(self, err: OSError, kept: str) -> str:
        return (f"{self.run_dir}: cannot write TensorBoard events ({err.strerror or err}); "
                f"{kept}, and metrics.jsonl holds every epoch: free space, then replay it "
                f"with python -m dist.tensorboard {self.run_dir}")

    def _abandon(self) -> None:
        """After a failed write, let tensorboardX's own exit handler (which flushes again) find
        nothing to write: its event files' unwritten bytes go to /dev/null. (tensorboardX
        internals, looked up defensively: if they change, the handler prints its error.)"""
        fw = getattr(self.writer, "file_writer", None)
        events = getattr(getattr(fw, "event_writer", None), "_ev_writer", None)
        record = getattr(events, "_py_recordio_writer", None)
        if record is None or not hasattr(record, "_writer"):
            return
        failed, record._writer = record._writer, _Discard()
        try:
            failed.close()
        except OSError:
            pass
        path = Path(getattr(record, "path", ""))
        if path.is_file() and path.stat().st_size == 0:   # not one event in it: no use
            path.unlink()


class _Discard:
    """A file that takes every write and keeps nothing (no fileno: nothing to fsync)."""

    def write(self, data) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_log(run_dir: str | Path, enabled: bool) -> TensorBoardLog | None:
    """The run's TensorBoard log where `enabled` (rank 0, run.tensorboard = true), else None."""
    return TensorBoardLog(run_dir) if enabled else None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m dist.tensorboard RUN_DIR   (writes its metrics.jsonl as "
              "TensorBoard event files into RUN_DIR)", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError as err:
        print(f"error: {run_dir / 'metrics.jsonl'}: {err.strerror or err}", file=sys.stderr)
        return 2
    try:
        log = TensorBoardLog(run_dir)
    except ExpectedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        for line in filter(str.strip, lines):
            log.write(json.loads(line))
        log.close()
    except ExpectedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{run_dir}: {len(lines)} epochs written; view them with tensorboard --logdir "
          f"{run_dir.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
