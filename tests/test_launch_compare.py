"""launch.lab.compare on tiny real members (trained here on real MNIST): its figures are the
members' averaged softmax on the validation split, the test split is read only when asked for,
and bad candidates are one line each."""
import json

import numpy as np
import pytest

from core.losses import softmax
from data.shards import read_split
from dist.evaluate import model_from_checkpoint, predict_scores
from launch.lab import compare
from tests.dist_helpers import run_job, small_run_args

pytestmark = pytest.mark.timeout(420)   # the first test trains the members (module fixture)


@pytest.fixture(scope="module")
def runs(mnist_h5, tmp_path_factory):
    """An ensemble folder with members 0-2 and one run of its own, 1 epoch of 12 steps each."""
    folder = tmp_path_factory.mktemp("runs")
    short = ("--set", "train.epochs=1")
    done = run_job(1, ["--members", "3", "--name", "ens",
                       *small_run_args(mnist_h5, folder, "ignored", *short)],
                   module="dist.ensemble", timeout=300)
    assert done.returncode == 0, done.stderr
    done = run_job(1, small_run_args(mnist_h5, folder, "solo", *short, "--set", "train.seed=7"))
    assert done.returncode == 0, done.stderr
    return folder


def run(capsys, *argv):
    code = compare.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_figures_are_the_averaged_softmax_on_validation(runs, mnist_h5, capsys):
    ens, solo = runs / "ens", runs / "solo"
    code, out, _ = run(capsys, ens, f"{ens}:0,2+{solo}", "--each", "--json",
                       "--data", mnist_h5)
    assert code == 0
    results = [json.loads(line) for line in out.splitlines()]
    # --each: the four members alone first, then the two candidates as given
    assert [len(r["runs"]) for r in results] == [1, 1, 1, 1, 3, 3]
    assert all(r["split"] == "val" and r["images"] == 1000 for r in results)
    images, labels, _ = read_split(mnist_h5, "val", 0, 1000)
    probas = {}
    for folder in [ens / "member-0", ens / "member-1", ens / "member-2", solo]:
        model, _ = model_from_checkpoint(folder / "best.h5")
        probas[folder] = softmax(predict_scores(model, images))
    for result, chosen in ((results[4], [ens / f"member-{m}" for m in range(3)]),
                           (results[5], [ens / "member-0", ens / "member-2", solo])):
        assert result["runs"] == [str(m) for m in chosen]
        assert len(result["members"]) == len(chosen)   # each member's own accuracy
        mean = np.mean([probas[m] for m in chosen], axis=0)
        assert result["errors"]["ensemble"] == int((mean.argmax(1) != labels).sum())
        nll = -np.log(mean[np.arange(len(labels)), labels.astype(int)]).mean()
        assert abs(result["ensemble_nll"] - nll) < 1e-6
    alone = results[3]   # solo, alone
    assert alone["errors"]["ensemble"] == int((probas[solo].argmax(1) != labels).sum())
    assert alone["errors"]["by_every_member"] == alone["errors"]["ensemble"]
    assert 0.5 < results[4]["ensemble"] < 1   # 12 steps of a small CNN already learn a lot


def test_reads_the_test_split_only_when_asked(runs, mnist_h5, capsys, monkeypatch):
    reads = []
    real = compare.read_split
    monkeypatch.setattr(compare, "read_split", lambda path, split, *a:
                        reads.append((str(path), split)) or real(path, split, *a))
    # no --data: the file the members were trained on (their config's data.path)
    code, out, err = run(capsys, runs / "ens", runs / "ens:0-1")
    assert code == 0 and reads == [(str(mnist_h5), "val")] and err == ""
    assert "of 1000" in out and "lowest val log-loss" in out
    code, out, err = run(capsys, runs / "ens", "--split", "test", "--data", mnist_h5)
    assert code == 0 and [s for _, s in reads] == ["val", "test"] and "of 10000" in out
    assert "these are test figures" in err


@pytest.mark.parametrize("candidate, message", [
    ("nothing-here", "neither a run folder with best.h5 nor an ensemble folder"),
    ("ens:0-5", "member-3: no best.h5"),
    ("ens:1-x", "'1-x' is not a member number or a range"),
])
def test_bad_candidates_are_one_line(runs, mnist_h5, capsys, candidate, message):
    code, out, err = run(capsys, runs / candidate, "--data", mnist_h5)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_members_of_different_validation_splits_are_refused(runs, mnist_h5, tmp_path, capsys):
    done = run_job(1, small_run_args(mnist_h5, tmp_path, "other", "--set", "train.epochs=1",
                                     "--set", "data.val_size=500"))
    assert done.returncode == 0, done.stderr
    code, _, err = run(capsys, f"{runs / 'solo'}+{tmp_path / 'other'}", "--data", mnist_h5)
    assert code == 2 and "their validation images differ" in err, err
