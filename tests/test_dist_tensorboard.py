"""TensorBoard curves: what dist/tensorboard.py writes, TensorBoard's own reader reads back.

* Records written through TensorBoardLog come back (tensorboard's EventAccumulator) with
  their values and epochs as steps; values a record lacks are left out.
* A real 2-rank training with --set run.tensorboard=true writes event files in the run
  folder whose curves equal its metrics.jsonl, epoch by epoch; without the setting, none.
* `python -m dist.tensorboard RUN` replays a finished run's metrics.jsonl.
* Without the writer installed, one line says how to get it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dist import tensorboard
from dist.errors import ExpectedError
from tests.dist_helpers import run_job, small_run_args


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the event files in run_dir, as TensorBoard reads them."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def expected_curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list] = {}
    for record in records:
        for tag, value in tensorboard.scalars(record).items():
            curves.setdefault(tag, []).append((record["epoch"], value))
    return curves


def assert_same_curves(found: dict, expected: dict) -> None:
    assert sorted(found) == sorted(expected)
    for tag, points in expected.items():          # event files store float32
        assert [s for s, _ in found[tag]] == [s for s, _ in points], tag
        assert [v for _, v in found[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


RECORDS = [
    {"epoch": 1, "global_step": 10, "lr": 0.05, "train_loss": 1.25, "train_acc": 0.61,
     "val_loss": 0.45, "val_acc": 0.87, "test_loss": None, "test_acc": None,
     "images_per_s": 6757.5, "world_size": 2, "threads": 1, "early_stop": False,
     "seconds": {"compute": 0.5, "allreduce": 0.2, "data": 0.1, "eval": 0.3,
                 "checkpoint": 0.01, "train": 0.9, "wall": 1.4}},
    {"epoch": 2, "global_step": 20, "lr": 0.0125, "train_loss": 0.5, "train_acc": 0.85,
     "val_loss": None, "val_acc": None, "test_loss": 0.31, "test_acc": 0.905,
     "images_per_s": 7001.0, "world_size": 2, "threads": 1, "early_stop": False,
     "seconds": {"compute": 0.4, "allreduce": 0.25, "data": 0.1, "eval": 0.35,
                 "checkpoint": 0.02, "train": 0.8, "wall": 2.6}},
]


def test_records_come_back_with_their_values_and_epochs(tmp_path):
    log = tensorboard.TensorBoardLog(tmp_path)
    for record in RECORDS:
        log.write(record)
    log.close()
    curves = read_curves(tmp_path)
    assert_same_curves(curves, expected_curves(RECORDS))
    assert curves["accuracy/val"] == [(1, pytest.approx(0.87))]          # epoch 2 has none
    assert curves["accuracy/test"] == [(2, pytest.approx(0.905))]
    assert curves["learning_rate"] == [(1, pytest.approx(0.05)), (2, pytest.approx(0.0125))]
    assert {"seconds/allreduce", "seconds/wall", "images_per_s", "loss/train"} <= set(curves)


def test_training_writes_its_metrics_as_curves(mnist_h5, tmp_path):
    result = run_job(2, small_run_args(mnist_h5, tmp_path, "tb", "--set", "run.tensorboard=true",
                                       "--set", "train.eval_test_every=1"))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "tb"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    curves = read_curves(run_dir)
    assert_same_curves(curves, expected_curves(records))
    assert {"loss/val", "accuracy/test", "seconds/allreduce", "learning_rate"} <= set(curves)

    plain = run_job(1, small_run_args(mnist_h5, tmp_path, "plain"))
    assert plain.returncode == 0, plain.stderr
    assert not list((tmp_path / "plain").glob("events.out.tfevents.*"))


def test_replay_a_finished_run(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert tensorboard.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path}: 2 epochs written")
    assert_same_curves(read_curves(tmp_path), expected_curves(RECORDS))
    assert tensorboard.main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nothing' / 'metrics.jsonl'}")


def test_without_the_writer_one_line_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)      # as if not installed
    with pytest.raises(ExpectedError, match=r"^run.tensorboard=true: the TensorBoard writer "
                                            r"is not installed \(pip install"):
        tensorboard.TensorBoardLog(tmp_path)
    assert tensorboard.open_log(tmp_path, enabled=False) is None
