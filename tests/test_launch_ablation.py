"""The ablation runner: each row is the previous row's config plus one change, run for real,
and the table comes from the runs' final.json (a small budget here; the README's is full)."""
import json
import subprocess
import sys

import pytest

from launch.lab.ablation import ROWS, row_configs
from tests.dist_helpers import REPO, env

pytestmark = pytest.mark.timeout(240)


def test_rows_are_cumulative_and_each_adds_one_change():
    rows = row_configs()
    assert [name for name, _, _ in rows] == [name for name, _, _ in ROWS]
    for (_, _, before), (name, _, after) in zip(rows, rows[1:]):
        assert set(before) <= set(after), name          # nothing is forgotten on the way
        changed = {k for k in after if before.get(k) != after[k]}
        assert changed, f"row {name} changes nothing"


def test_two_rows_run_and_tabulate(mnist_h5, tmp_path):
    small = ["--set", f"data.path={mnist_h5}", "--set", "data.val_size=1000",
             "--set", "train.steps_per_epoch=5", "--set", "train.epochs=1", "--set", "run.threads=1"]
    out = subprocess.run([sys.executable, "-m", "launch.lab.ablation", "--ranks", "1", "--rows",
                          "sgd,momentum", "--out", str(tmp_path), *small], cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=220)
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["row"] for r in results] == ["sgd", "momentum"]
    for r in results:
        final = json.loads((tmp_path / r["row"] / "final.json").read_text())
        assert r["test_acc"] == final["test_acc"] and r["epochs_run"] == 1
    config = json.loads((tmp_path / "momentum" / "config.json").read_text())
    assert config["optim"]["momentum"] == 0.9 and config["model"]["loss"] == "mse"
    table = (tmp_path / "ablation.md").read_text()
    assert "| sgd |" in table and "| momentum |" in table


def test_unknown_row_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "launch.lab.ablation", "--rows", "sgd,adam",
                          "--out", str(tmp_path)], cwd=REPO, env=env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "'adam'" in out.stderr
    assert not any(tmp_path.iterdir())


def test_bad_set_is_one_line_before_any_row_trains(tmp_path):
    out = subprocess.run([sys.executable, "-m", "launch.lab.ablation", "--rows", "sgd,conv",
                          "--set", "train.epochs=x", "--out", str(tmp_path)], cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == ("launch.lab.ablation: --set train.epochs: train.epochs must "
                                  "be an integer, got 'x'")
    assert not any(tmp_path.iterdir())
