"""dist.evaluate, --debug and dist.ensemble, end to end on real MNIST."""
import json

import h5py
import numpy as np
import pytest

from core.spec import normalize_spec
from dist.evaluate import evaluate, model_from_checkpoint
from data.shards import read_split
from tests.dist_helpers import error_lines, run_job, small_run_args

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def trained(mnist_h5, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = run_job(2, small_run_args(mnist_h5, runs, "t", "--set", "train.epochs=1",
                                       "--set", "train.steps_per_epoch=40"))
    assert result.returncode == 0, result.stderr
    return runs / "t"


def test_evaluate_cli_matches_the_library_and_the_final_report(trained, mnist_h5):
    out = run_job(1, [str(trained / "best.h5"), "--json"], module="dist.evaluate")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    model, ckpt = model_from_checkpoint(trained / "best.h5")
    images, labels, _ = read_split(mnist_h5, "test")
    direct = evaluate(model, images, labels, "xent")
    assert result["acc"] == direct["acc"] and abs(result["loss"] - direct["loss"]) < 1e-6
    confusion = np.array(result["confusion"])
    assert confusion.sum() == 10000 and np.trace(confusion) == round(result["acc"] * 10000)
    assert result["acc"] > 0.85  # 40 steps of a small CNN already learn a lot
    final = json.loads((trained / "final.json").read_text())
    assert final["test_acc"] == result["acc"]
    text = run_job(1, [str(trained)], module="dist.evaluate")
    assert "accuracy" in text.stdout and "true\\pred" in text.stdout


def test_the_final_report_reuses_the_last_epochs_test_figure_only_for_that_model(mnist_h5,
                                                                                 tmp_path):
    # With the test set evaluated at every epoch's end, best.h5 of a 1-epoch run is the model
    # that was just evaluated: final.json takes that figure, and it is what best.h5 scores.
    result = run_job(2, small_run_args(mnist_h5, tmp_path, "r", "--set", "train.epochs=1",
                                       "--set", "train.steps_per_epoch=20",
                                       "--set", "train.eval_test_every=1"))
    assert result.returncode == 0, result.stderr
    final = json.loads((tmp_path / "r" / "final.json").read_text())
    epoch = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    model, _ = model_from_checkpoint(tmp_path / "r" / "best.h5")
    images, labels, _ = read_split(mnist_h5, "test")
    assert final["test_acc"] == epoch["test_acc"] == evaluate(model, images, labels, "xent")["acc"]


def test_test_time_augmentation_averages_the_shifted_views():
    # predict_scores(tta=k): the outputs of each image and its first k one-pixel shifts,
    # averaged; tta=0 is the image alone (the default everywhere).
    from core.model import Model
    from data.pipeline import TTA_SHIFTS, shifted
    from dist.evaluate import predict_scores
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (9, 28, 28), dtype=np.uint8)
    model = Model([{"type": "conv", "out": 4, "kernel": 3}, {"type": "relu"},
                   {"type": "flatten"}, {"type": "dense", "out": 10}], seed=2, dtype=np.float64)
    views = [images] + [shifted(images, dy, dx) for dy, dx in TTA_SHIFTS[:3]]
    expected = np.mean([predict_scores(model, v, threads=1) for v in views], axis=0)
    np.testing.assert_allclose(predict_scores(model, images, threads=2, tta=3), expected,
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(expected, predict_scores(model, images, threads=1))


def test_tta_out_of_range_is_one_line(trained, capsys):
    out = run_job(1, [str(trained / "best.h5"), "--tta", "9"], module="dist.evaluate")
    assert out.returncode == 2 and "--tta: must be a whole number in 0..8, got '9'" in out.stderr
    from launch.predict import main as predict
    from launch.serve import main as serve
    for tool in (predict, serve):
        with pytest.raises(SystemExit) as exit_:
            tool([str(trained), "--tta", "-1"] + (["x.png"] if tool is predict else []))
        assert exit_.value.code == 2
        assert "--tta: must be a whole number in 0..8, got '-1'" in capsys.readouterr().err
    val = run_job(1, [str(trained / "best.h5"), "--split", "val", "--tta", "4", "--json"],
                  module="dist.evaluate")
    assert val.returncode == 0, val.stderr
    assert json.loads(val.stdout)["tta"] == 4 and json.loads(val.stdout)["acc"] > 0.5


def test_evaluate_refuses_a_bad_checkpoint_in_one_line(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    out = run_job(1, [str(bad)], module="dist.evaluate")
    lines = error_lines(out.stderr)
    assert out.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {bad}: corrupt or truncated checkpoint"), lines


def test_debug_mode_checks_gradients_and_runs_short(mnist_h5, tmp_path):
    out = run_job(1, ["--debug", *small_run_args(mnist_h5, tmp_path, "dbg",
                                                 "--set", "train.steps_per_epoch=0")])
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "gradient check" in ln)
    assert float(line.split("max relative error ")[1].split()[0]) < 1e-4
    assert "20 steps/epoch" in out.stdout  # --debug shortens the epoch


def test_debug_mode_names_the_layer_that_overflows(mnist_h5, tmp_path):
    # A learning rate this large blows the weights up at the first step; --debug points at the
    # first layer whose output stops being finite instead of reporting a NaN loss.
    out = run_job(1, ["--debug", *small_run_args(mnist_h5, tmp_path, "dbg", "--set",
                                                 "optim.lr=1e30")])
    assert out.returncode == 2
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and "--debug: layer" in lines[0] and "non-finite" in lines[0], lines


def test_ensemble_of_two_averages_member_probabilities(mnist_h5, tmp_path):
    out = run_job(2, ["--members", "2", "--name", "ens",
                      *small_run_args(mnist_h5, tmp_path, "ignored", "--set", "train.epochs=1")],
                  module="dist.ensemble")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    thetas = []
    for m in range(2):
        with h5py.File(tmp_path / "ens" / f"member-{m}" / "best.h5", "r") as f:
            thetas.append(f["theta"][...])
            assert json.loads(f.attrs["config"])["train"]["seed"] == m
    assert not np.array_equal(thetas[0], thetas[1])  # different seeds, different models
    # Recompute the ensemble from the members' probabilities.
    from dist.evaluate import predict_scores, scores_to_proba
    images, labels, _ = read_split(mnist_h5, "test")
    probas = [scores_to_proba(predict_scores(model_from_checkpoint(
        tmp_path / "ens" / f"member-{m}" / "best.h5")[0], images), "xent") for m in range(2)]
    expected = (np.mean(probas, axis=0).argmax(1) == labels).mean()
    assert result["test"]["ensemble"] == pytest.approx(expected, abs=1e-12)
    assert len(result["test"]["members"]) == 2
    # The error counts: "most" of two members is both of them.
    wrong = [p.argmax(1) != labels for p in probas]
    assert result["test"]["errors"] == {
        "ensemble": round((1 - expected) * len(labels)),
        "by_every_member": int((wrong[0] & wrong[1]).sum()),
        "by_most_members": int((wrong[0] & wrong[1]).sum()),
        "by_any_member": int((wrong[0] | wrong[1]).sum())}


def test_ensemble_of_two_presets_trains_each_member_with_its_own(mnist_h5, tmp_path):
    # --members classic:1,mlp:1: member 0 is the sigmoid/squared-error net, member 1 the ReLU
    # softmax one; each member's probabilities come from its own loss.
    out = run_job(2, ["--members", "classic:1,mlp:1", "--name", "mix",
                      *small_run_args(mnist_h5, tmp_path, "ignored")[4:]], module="dist.ensemble")
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "mix"
    result = json.loads((folder / "ensemble.json").read_text())
    assert result["presets"] == ["classic", "mlp"] and result["preset"] == "classic:1,mlp:1"
    from dist.evaluate import predict_scores, scores_to_proba
    images, labels, _ = read_split(mnist_h5, "test")
    probas = []
    for m, (preset, loss) in enumerate([("classic", "mse"), ("mlp", "xent")]):
        config = json.loads((folder / f"member-{m}" / "config.json").read_text())
        assert (config["preset"], config["train"]["seed"], config["model"]["loss"]) == (preset, m, loss)
        model, _ = model_from_checkpoint(folder / f"member-{m}" / "best.h5")
        probas.append(scores_to_proba(predict_scores(model, images), loss))
    expected = (np.mean(probas, axis=0).argmax(1) == labels).mean()
    assert result["test"]["ensemble"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("members, extra, message", [
    ("best:2,cnn", [], "--members best:2,cnn: 'cnn' is not NAME:COUNT with COUNT >= 1"),
    ("cnn:1,mlp:0", [], "--members cnn:1,mlp:0: 'mlp:0' is not NAME:COUNT with COUNT >= 1"),
    ("0", [], "--members 0: must be >= 1"),
    ("cnn:1,mlp:1", ["--preset", "cnn"], "--preset cnn: with --members cnn:1,mlp:1 the presets are named in --members"),
    ("cnn:1,nosuch:1", [], "--preset nosuch: no such preset"),
    ("2", ["--snapshots"], "--snapshots: preset 'cnn' has schedule.kind='cosine'; snapshots "
                           "come from --set schedule.kind=cyclic"),
    ("2", ["--snapshots", "-1"], "--snapshots -1: must be >= 0"),
    ("2", ["--ranks-per-member", "3"], "--ranks-per-member 3: must divide the job's 2 ranks"),
])
def test_ensemble_refuses_bad_members_in_one_line(tmp_path, members, extra, message):
    out = run_job(2, ["--members", members, "--name", "bad", *extra,
                      "--set", f"run.dir={tmp_path}"], module="dist.ensemble")
    lines = error_lines(out.stderr)
    assert out.returncode == 2 and len(lines) == 1, (out.returncode, lines)
    assert lines[0].startswith(f"error: {message}"), lines
    assert not (tmp_path / "bad").exists()


def test_ranks_per_member_trains_every_member_on_the_whole_job(mnist_h5, tmp_path):
    # Two members, two ranks: by default two groups of one rank train side by side; with
    # --ranks-per-member 2 one group of both ranks trains them in turn.
    out = run_job(2, ["--members", "2", "--name", "ens", "--ranks-per-member", "2",
                      *small_run_args(mnist_h5, tmp_path, "ignored")], module="dist.ensemble")
    assert out.returncode == 0, out.stderr
    assert "groups of ranks" not in out.stdout
    for m in (0, 1):
        with h5py.File(tmp_path / "ens" / f"member-{m}" / "best.h5", "r") as f:
            assert int(f.attrs["world_size"]) == 2


def test_ensemble_members_must_share_their_data_split_and_seeds():
    from dist.config import load_config
    from dist.ensemble import shared_setting_conflict
    best, pool = load_config("best"), load_config("best-pool")
    assert shared_setting_conflict([best, pool]) is None
    pool.data.val_size = 1000  # another validation split: the averages would mix images
    assert shared_setting_conflict([best, pool]) == (
        "presets 'best' and 'best-pool' differ in data.val_size (5000 and 1000): "
        "set it for both with --set")


def test_interrupted_ensemble_continues_where_it_stopped(mnist_h5, tmp_path):
    args = ["--members", "2", "--name", "ens",
            *small_run_args(mnist_h5, tmp_path, "ignored", "--set", "run.keep_last=2")]
    out = run_job(2, args, module="dist.ensemble")
    assert out.returncode == 0, out.stderr
    member0, member1 = tmp_path / "ens" / "member-0", tmp_path / "ens" / "member-1"
    with h5py.File(member1 / "ckpt-e002-s00000.h5", "r") as f:
        uninterrupted = f["theta"][...]
    kept = (member0 / "best.h5").stat().st_mtime_ns
    # Member 1 was stopped after its first epoch: no final.json, no epoch-2 checkpoint.
    (member1 / "final.json").unlink()
    (member1 / "ckpt-e002-s00000.h5").unlink()
    out = run_job(2, args, module="dist.ensemble")
    assert out.returncode == 0, out.stderr
    assert "member 0: already trained, kept" in out.stdout
    assert "resuming at epoch 2" in out.stdout
    assert (member0 / "best.h5").stat().st_mtime_ns == kept
    with h5py.File(member1 / "ckpt-e002-s00000.h5", "r") as f:
        assert np.array_equal(f["theta"][...], uninterrupted)  # exact resume, same group size
    assert (member1 / "final.json").is_file() and (tmp_path / "ens" / "ensemble.json").is_file()


def test_early_stopping_stops_when_validation_stops_improving(mnist_h5, tmp_path):
    # With a vanishing learning rate the weights cannot improve after epoch 1: patience 2
    # ends the run after epoch 3 of 10, and best.h5 stays the epoch-1 model.
    out = run_job(1, small_run_args(mnist_h5, tmp_path, "es", "--set", "train.epochs=10",
                                    "--set", "train.steps_per_epoch=3", "--set", "optim.lr=1e-12",
                                    "--set", "schedule.kind=constant", "--set", "train.patience=2"))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in (tmp_path / "es" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["early_stop"] for r in rows] == [False, False, True]
    final = json.loads((tmp_path / "es" / "final.json").read_text())
    assert final["best_epoch"] == 1 and "early stop" in out.stdout


def test_ensemble_refuses_a_member_folder_of_another_seed(mnist_h5, tmp_path):
    # A member trained by hand with the wrong seed would silently make the ensemble a different
    # one: the job ends before any training, naming the file and both seeds.
    member1 = tmp_path / "ens" / "member-1"
    member1.mkdir(parents=True)
    (member1 / "config.json").write_text(json.dumps({"preset": "cnn", "train": {"seed": 7}}))
    (member1 / "final.json").write_text("{}")
    out = run_job(2, ["--members", "2", "--name", "ens", "--preset", "cnn",
                      *small_run_args(mnist_h5, tmp_path, "ignored")[2:]], module="dist.ensemble")
    assert out.returncode == 2
    lines = error_lines(out.stderr)
    assert lines == [f"error: member 1: {member1 / 'config.json'}: preset 'cnn' with train.seed 7, "
                     "but this member needs preset 'cnn' with train.seed 1"], lines
    assert not (tmp_path / "ens" / "member-0").exists()


def test_ensemble_refuses_a_member_trained_with_other_settings(tmp_path):
    # Same preset and seed, but trained for other epochs or with another network: averaging it
    # in would make another ensemble than the command says. Settings that do not change the
    # weights (where it writes, how often it reports) do not count.
    from dist.config import load_config
    from dist.ensemble import member_mismatch

    def member(*overrides):
        cfg = load_config("cnn", overrides=["train.seed=1", *overrides])
        cfg.model.layers = normalize_spec(cfg.model.layers)    # as dist.train saves it
        folder = tmp_path / f"member-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
        return folder

    wanted = load_config("cnn", overrides=["train.epochs=20"])
    assert member_mismatch(member("train.epochs=20", "run.dir=elsewhere",
                                  "train.eval_test_every=0"), wanted, 1) is None
    folder = member()
    assert member_mismatch(folder, wanted, 1) == (
        f"{folder / 'config.json'}: train.epochs is {load_config('cnn').train.epochs}, "
        "but this ensemble's members have 20")
    wider = load_config("cnn", overrides=["train.epochs=20"])
    wider.model.layers = [dict(layer) for layer in wider.model.layers]
    wider.model.layers[0]["out"] *= 2
    folder = member("train.epochs=20")
    message = member_mismatch(folder, wider, 1)
    assert message.startswith(f"{folder / 'config.json'}: model.layers differ from this "
                              "ensemble's at layer 0"), message


def test_a_member_saved_before_a_layer_key_existed_still_belongs(tmp_path):
    # best-deskew members were trained before the deskew layer had `before_augment`: their
    # config.json and checkpoints say {"type": "deskew"}, which means before_augment = false.
    from dist.checkpoint import normalized
    from dist.config import load_config
    from dist.ensemble import member_mismatch

    cfg = load_config("best-deskew", overrides=["train.seed=9"])
    old = cfg.to_dict()
    old["model"]["layers"] = [{"type": "deskew"}] + normalize_spec(cfg.model.layers)[1:]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert member_mismatch(tmp_path, load_config("best-deskew"), 9) is None
    message = member_mismatch(tmp_path, load_config("best-deskew-raw"), 9)
    assert "preset 'best-deskew' with train.seed 9" in message
    assert normalized(old["model"]["layers"]) == normalize_spec(cfg.model.layers)
    # and its checkpoints resume: the architecture check compares normalized specs
    from types import SimpleNamespace
    from dist.checkpoint import check_compatible
    check_compatible(SimpleNamespace(path=tmp_path / "ckpt.h5", spec=old["model"]["layers"]),
                     expect_spec=normalize_spec(cfg.model.layers))


def test_members_left_to_train_are_dealt_evenly_over_the_groups(tmp_path):
    from dist.ensemble import deal_members, member_progress

    # Members 1 and 3 kept (trained by hand): the four new ones go two to each group, instead
    # of group 1 idling while group 0 trains 0, 2, 4 and 6 one after another.
    assert deal_members({0: 12, 1: 0, 2: 12, 3: 0, 4: 12, 5: 12, 6: 0}, [1, 1]) == [[0, 4], [2, 5]]
    # A started member goes to a group of as many ranks as it started on (then it resumes
    # bitwise); the new ones, longest first, to the least loaded group.
    assert deal_members({0: 0, 1: 3, 2: 12, 3: 12}, [2, 1], trained_on={1: 1}) == [[2], [1, 3]]
    assert deal_members({0: 0, 1: 0}, [2]) == [[]]
    # Progress, from the folder: new, started (newest checkpoint), done.
    member = tmp_path / "member-0"
    member.mkdir()
    assert member_progress(member, 12) == (12, None)
    for epoch in (4, 5):
        with h5py.File(member / f"ckpt-e{epoch:03d}-s00000.h5", "w") as f:
            f.attrs["epoch"], f.attrs["world_size"] = epoch, 2
    assert member_progress(member, 12) == (7, 2)
    (member / "final.json").write_text("{}")
    assert member_progress(member, 12) == (0, None)


def test_snapshot_ensemble_on_validation_only_then_its_one_test_figure(mnist_h5, tmp_path):
    # Two members of one rank each, each a cyclic run of 2 cycles (a snapshot at the end of
    # each epoch), with the moving average on and the test set off: 4 models averaged on the
    # validation split only. Then the same command with the test set on combines the same
    # members (kept, not retrained), here only the last snapshot of each.
    args = ["--members", "2", "--name", "snap", "--snapshots",
            *small_run_args(mnist_h5, tmp_path, "ignored", "--set", "schedule.kind=cyclic",
                            "--set", "schedule.cycles=2", "--set", "optim.ema_decay=0.9",
                            "--set", "train.report_test=false")]
    out = run_job(2, args, module="dist.ensemble")
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "snap"
    result = json.loads((folder / "ensemble.json").read_text())
    models = [f"member-{m}/snapshot-c0{c}.h5" for m in range(2) for c in (1, 2)]
    assert result["models"] == models and "test" not in result and "wall_seconds" in result
    for m in range(2):
        final = json.loads((folder / f"member-{m}" / "final.json").read_text())
        metrics = [json.loads(line) for line in
                   (folder / f"member-{m}" / "metrics.jsonl").read_text().splitlines()]
        assert final["test_acc"] is None and all(r["test_acc"] is None for r in metrics)
        # The snapshots are the averaged weights of the run at each cycle's end, and what the
        # run validated at that epoch.
        for epoch, record in enumerate(metrics, 1):
            model, ckpt = model_from_checkpoint(folder / f"member-{m}" / f"snapshot-c0{epoch}.h5")
            assert ckpt.kind == "model" and ckpt.epoch == epoch
            val = evaluate(model, *read_split(mnist_h5, "val", 0, 1000)[:2], "xent")
            assert val["acc"] == record["val_acc"] and "raw_val_acc" in record
    images, labels, _ = read_split(mnist_h5, "val", 0, 1000)
    from dist.evaluate import predict_scores, scores_to_proba
    probas = [scores_to_proba(predict_scores(model_from_checkpoint(folder / name)[0], images),
                              "xent") for name in models]
    expected = (np.mean(probas, axis=0).argmax(1) == labels).mean()
    assert result["val"]["ensemble"] == pytest.approx(expected, abs=1e-12)

    again = [a.replace("train.report_test=false", "train.report_test=true") for a in args]
    out = run_job(2, [*again[:again.index("--snapshots") + 1], "1",
                      *again[again.index("--snapshots") + 1:]], module="dist.ensemble")
    assert out.returncode == 0, out.stderr
    assert "member 0: already trained, kept" in out.stdout
    result = json.loads((folder / "ensemble.json").read_text())
    assert result["models"] == ["member-0/snapshot-c02.h5", "member-1/snapshot-c02.h5"]
    assert "test" in result and "test accuracy" in out.stdout


def test_raw_weights_of_a_run_with_a_moving_average(mnist_h5, tmp_path):
    # --raw (evaluate, export, ensemble): the trained weights, not their average. The ensemble
    # takes each member's epoch whose raw weights did best on validation (metrics.jsonl), from
    # that epoch's kept checkpoint, as best.h5 would have been with optim.ema_decay = 0.
    from dist.checkpoint import load_checkpoint
    args = ["--members", "2", "--name", "ens", *small_run_args(
        mnist_h5, tmp_path, "ignored", "--set", "optim.ema_decay=0.9", "--set", "run.keep_last=2",
        "--set", "train.report_test=false")]
    assert run_job(2, args, module="dist.ensemble").returncode == 0
    out = run_job(2, [*args, "--raw"], module="dist.ensemble")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert result["raw"] is True and result["models"] == [
        "member-0/best-raw.h5", "member-1/best-raw.h5"]
    images, labels, _ = read_split(mnist_h5, "val", 0, 1000)
    for m in (0, 1):
        folder = tmp_path / "ens" / f"member-{m}"
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        raw_acc = [r["raw_val_acc"] for r in records]
        epoch = raw_acc.index(max(raw_acc)) + 1                     # the first best epoch
        ckpt = load_checkpoint(folder / f"ckpt-e{epoch:03d}-s00000.h5", resumable=False)
        model = load_checkpoint(folder / "best-raw.h5", resumable=False)
        assert np.array_equal(model.theta, ckpt.theta) and np.array_equal(model.state, ckpt.state)
        assert not np.array_equal(ckpt.ema_theta, ckpt.theta)      # the average is another model
        # dist.evaluate --raw on the checkpoint gives that epoch's raw validation figure.
        ev = run_job(1, [str(ckpt.path), "--raw", "--split", "val", "--json"],
                     module="dist.evaluate")
        assert json.loads(ev.stdout)["acc"] == max(raw_acc) == result["val"]["members"][m]
    # export --raw writes the same weights as a model file.
    exported = tmp_path / "raw.h5"
    assert run_job(1, ["export", "--raw", str(ckpt.path), str(exported)],
                   module="dist.checkpoint").returncode == 0
    assert np.array_equal(load_checkpoint(exported, resumable=False).theta, ckpt.theta)
    bad = run_job(2, [*args, "--raw", "--snapshots"], module="dist.ensemble")
    assert bad.returncode == 2 and "--raw with --snapshots" in error_lines(bad.stderr)[0]
