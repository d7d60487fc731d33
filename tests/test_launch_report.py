"""launch.report on a real trained run: every picture written and sensible, report.json agrees
with `python -m dist.evaluate --json` on the same checkpoint, errors are one line with exit 2.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from launch import report
from tests.test_launch_predict import train_once

REPO = Path(__file__).resolve().parents[1]
PICTURES = ("curves.png", "confusion.png", "mistakes.png")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_h5) -> Path:
    return train_once(tmp_path_factory, mnist_h5)   # shared with test_launch_predict.py


@pytest.fixture(scope="module")
def written(trained_run, tmp_path_factory):
    """A copy of the run with a bench.json, and the report on it: (run, out, stdout, code)."""
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(trained_run, run)
    rows = [{"preset": p, "ranks": n, "images_per_s": base * n ** 0.85, "seconds": 1.0}
            for p, base in (("mlp", 9000.0), ("cnn", 800.0)) for n in (1, 2, 4)]
    (run / "bench.json").write_text(json.dumps(rows))
    out = run.parent / "pictures"
    done = subprocess.run([sys.executable, "-m", "launch.report", str(run), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return run, out, done.stdout


def test_pictures_written_and_sensible(written):
    _, out, stdout = written
    for name in PICTURES + ("scaling.png",):
        path = out / name
        assert path.stat().st_size > 10_000, name
        with Image.open(path) as picture:
            assert picture.format == "PNG"
            w, h = picture.size
            assert 400 <= w <= 3000 and 300 <= h <= 3000, (name, picture.size)
            assert len(picture.convert("L").getcolors(1 << 16) or range(300)) > 50  # not blank
    assert "report.json" in stdout


def test_report_json_matches_dist_evaluate(written, trained_run):
    run, out, _ = written
    rep = json.loads((out / "report.json").read_text())
    done = subprocess.run([sys.executable, "-m", "dist.evaluate", str(run / "best.h5"), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reference = json.loads(done.stdout)
    assert rep["checkpoint"] == str(run / "best.h5")
    assert rep["test"]["acc"] == reference["acc"]
    assert rep["test"]["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert rep["test"]["confusion"] == reference["confusion"]
    assert rep["test"]["n"] == 10000

    mistakes = rep["mistakes"]
    assert len(mistakes) == round((1 - reference["acc"]) * 10000)
    confusion = rep["test"]["confusion"]
    for m in mistakes:
        assert m["true"] != m["predicted"] and 0 <= m["index"] < 10000
        assert 0.1 <= m["probability"] <= 1.0        # the top class of 10 has at least 10%
    for t in range(10):
        for p in range(10):
            if t != p:
                assert confusion[t][p] == sum(m["true"] == t and m["predicted"] == p
                                              for m in mistakes)

    lines = (trained_run / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert rep["curves"]["epoch"] == [m["epoch"] for m in metrics] == [1, 2]
    assert rep["curves"]["val_acc"] == [m["val_acc"] for m in metrics]
    assert rep["curves"]["lr"] == [m["lr"] for m in metrics]
    assert rep["pictures"] == list(PICTURES) + ["scaling.png"]


def test_without_bench_json_scaling_is_skipped_with_a_note(written, tmp_path, capsys):
    run, _, _ = written
    plain = tmp_path / "run"
    shutil.copytree(run, plain, ignore=shutil.ignore_patterns("bench.json", "report"))
    assert report.main([str(plain)]) == 0
    stdout = capsys.readouterr().out
    assert "scaling.png skipped" in stdout
    made = sorted(p.name for p in (plain / "report").iterdir())
    assert made == sorted(PICTURES + ("report.json",))


def test_errors_are_one_line_exit_2(written, tmp_path, capsys):
    run, _, _ = written
    cases = {}
    cases["missing run folder"] = (tmp_path / "nope", "no such run folder")
    no_metrics = tmp_path / "no-metrics"
    shutil.copytree(run, no_metrics)
    (no_metrics / "metrics.jsonl").unlink()
    cases["no metrics"] = (no_metrics, "metrics.jsonl: no such file")
    no_ckpt = tmp_path / "no-ckpt"
    no_ckpt.mkdir()
    shutil.copy(run / "metrics.jsonl", no_ckpt)
    cases["no checkpoint"] = (no_ckpt, "no checkpoint")
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(run / "metrics.jsonl", broken)
    (broken / "best.h5").write_bytes(b"garbage")
    cases["corrupt checkpoint"] = (broken, "best.h5")
    for what, (folder, message) in cases.items():
        assert report.main([str(folder)]) == 2, what
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("error: "), (what, err)
        assert message in err, (what, err)


# -- the timeline (run.timeline, dist/timeline.py; read back by launch/trace.py) ------------

SLOW_SECONDS = 0.1       # rank 1 sleeps this long before each batch: several of its steps


@pytest.fixture(scope="module")
def timeline_runs(tmp_path_factory, mnist_h5):
    """Two 2-rank runs with a 4-step timeline: rank 1 slowed on purpose (tests/slow_rank.py),
    and an even one; and launch.report on each: name -> (run folder, report's stdout)."""
    from tests.dist_helpers import run_job, small_run_args
    folder, runs = tmp_path_factory.mktemp("timeline-report"), {}
    window = ("--set", "run.timeline=6", "--set", "run.timeline_start=3")
    for name, prefix in (("slow", ["tests/slow_rank.py", str(SLOW_SECONDS)]), ("even", [])):
        args = small_run_args(mnist_h5, folder, name, *window)
        job = run_job(2, prefix[1:] + args, module=prefix[0]) if prefix else run_job(2, args)
        assert job.returncode == 0, job.stdout + job.stderr
        done = subprocess.run([sys.executable, "-m", "launch.report", str(folder / name)],
                              cwd=REPO, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        runs[name] = folder / name, done.stdout
    return runs


def test_the_slowed_rank_is_named_with_its_host(timeline_runs):
    run, stdout = timeline_runs["slow"]
    rep = json.loads((run / "report" / "report.json").read_text())
    straggler = rep["timeline"]["straggler"]
    assert straggler["rank"] == 1 and straggler["host"] == rep["timeline"]["ranks"]["1"]["host"]
    # The job loses about the sleep at every step (rank 0 waits for it in batch norm's sum).
    assert 0.7 * SLOW_SECONDS * 1e3 < straggler["lost_ms_per_step"] < 2 * SLOW_SECONDS * 1e3
    assert f"straggler: rank 1 on {straggler['host']}" in stdout
    fast, slow = rep["timeline"]["ranks"]["0"], rep["timeline"]["ranks"]["1"]
    assert slow["phases_ms"]["data"] > fast["phases_ms"]["data"] + 0.7 * SLOW_SECONDS * 1e3
    assert fast["wait_ms"] > 0.7 * SLOW_SECONDS * 1e3 > slow["wait_ms"]


def test_an_even_run_has_no_straggler_and_its_timeline_is_drawn(timeline_runs):
    run, stdout = timeline_runs["even"]
    assert "no straggler" in stdout and "straggler: rank" not in stdout
    rep = json.loads((run / "report" / "report.json").read_text())
    assert rep["timeline"]["straggler"] is None and rep["pictures"][-1] == "timeline.png"
    for line in ("ms per step:", "gradient sum", "waiting"):
        assert line in stdout
    with Image.open(run / "report" / "timeline.png") as picture:
        assert picture.format == "PNG" and picture.size[0] >= 800
        assert len(picture.convert("L").getcolors(1 << 16) or range(300)) > 20  # not blank
