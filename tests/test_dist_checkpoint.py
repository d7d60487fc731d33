"""Checkpoints with a moving average of the weights, and compact model files (export).

In process and fast: the checkpoints are written by dist.checkpoint from a real model of the
`best` kind (batch norm, so the state matters), without training.
"""
import dataclasses
import json

import h5py
import numpy as np
import pytest
from PIL import Image

from core.model import Model
from data.hdf5 import open_mnist, read_arrays
from dist import checkpoint as ck
from dist.errors import ExpectedError
from dist.config import load_config
from dist import evaluate
from dist.evaluate import model_from_checkpoint, predict_scores
from launch import predict
from tests.dist_helpers import SMALL_LAYERS, error_lines, run_job


def small_checkpoint(path, fingerprint="f" * 64, ema=True, seed=0):
    """A training checkpoint of the tests' small network, with weights and statistics that
    differ between theta and the moving average (as after training)."""
    cfg = load_config("cnn", overrides=[f"model.layers={SMALL_LAYERS}", "optim.ema_decay=0.99"])
    model = Model(cfg.model.layers, seed=seed)
    rng = np.random.default_rng(seed)
    model.state[...] = rng.random(model.state.size).astype(np.float32) + 0.5
    ema_theta = model.theta + np.float32(0.01) * rng.standard_normal(model.theta.size,
                                                                     dtype=np.float32)
    ema_state = model.state * np.float32(1.1)
    ckpt = ck.Checkpoint(path, model.theta.copy(), model.state.copy(),
                         rng.standard_normal(model.theta.size, dtype=np.float32), 3, 0, 120,
                         0.97, 2, 1, cfg.to_dict(), model.spec, fingerprint, 2,
                         ema_theta=ema_theta if ema else None,
                         ema_state=ema_state if ema else None)
    ck.save_checkpoint(path, ckpt)
    return ckpt


def test_the_moving_average_is_saved_and_is_the_model(tmp_path):
    saved = small_checkpoint(tmp_path / "a.h5")
    loaded = ck.load_checkpoint(tmp_path / "a.h5")
    for name in ck.ARRAYS:
        assert np.array_equal(getattr(loaded, name), getattr(saved, name)), name
    model, _ = model_from_checkpoint(tmp_path / "a.h5")
    assert np.array_equal(model.theta, saved.ema_theta)
    assert np.array_equal(model.state, saved.ema_state)


def test_a_checkpoint_without_the_average_still_loads(tmp_path):
    # As written before the moving average existed: no /ema_* datasets and no kind attribute.
    small_checkpoint(tmp_path / "old.h5", ema=False)
    with h5py.File(tmp_path / "old.h5", "a") as f:
        del f.attrs["kind"], f.attrs["source"], f.attrs["checksum"]
    loaded = ck.load_checkpoint(tmp_path / "old.h5")
    assert loaded.ema_theta is None and loaded.kind == ck.TRAINING
    model, _ = model_from_checkpoint(tmp_path / "old.h5")
    assert np.array_equal(model.theta, loaded.theta)


def test_half_an_average_or_a_wrong_size_is_refused(tmp_path):
    small_checkpoint(tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "a") as f:
        del f["ema_state"]
    with pytest.raises(ExpectedError, match="one of /ema_theta and /ema_state without"):
        ck.load_checkpoint(tmp_path / "a.h5")
    small_checkpoint(tmp_path / "b.h5")
    with h5py.File(tmp_path / "b.h5", "a") as f:
        del f["ema_theta"]
        f["ema_theta"] = np.zeros(3, np.float32)
    with pytest.raises(ExpectedError, match=r"/ema_theta has 3 entries"):
        ck.load_checkpoint(tmp_path / "b.h5")


def test_an_exported_model_predicts_exactly_as_its_checkpoint(tmp_path, mnist_h5, capsys):
    fingerprint = open_mnist(mnist_h5).fingerprint
    run = tmp_path / "run"
    run.mkdir()
    small_checkpoint(run / "ckpt-e003-s00000.h5", fingerprint, seed=1)
    small_checkpoint(run / "best.h5", fingerprint, seed=2)        # export takes this one
    out = run_job(1, ["export", str(run), str(tmp_path / "model.h5")], module="dist.checkpoint")
    assert out.returncode == 0, out.stderr
    assert "MiB" in out.stdout

    exported = ck.load_checkpoint(tmp_path / "model.h5", resumable=False)
    assert exported.kind == ck.MODEL and exported.velocity is None
    assert exported.ema_theta is None and exported.source == str(run / "best.h5")
    original, _ = model_from_checkpoint(run / "best.h5")
    assert np.array_equal(exported.theta, original.theta)        # the average, as the model
    images = read_arrays(mnist_h5, "test")[0][:500]
    shipped, _ = model_from_checkpoint(tmp_path / "model.h5")
    assert np.array_equal(predict_scores(shipped, images), predict_scores(original, images))
    # Smaller than the training checkpoint: no velocity, no second copy of the weights.
    assert (tmp_path / "model.h5").stat().st_size < 0.45 * (run / "best.h5").stat().st_size

    # dist.evaluate reads it like a checkpoint, and gives the checkpoint's figures; so does
    # launch.predict, for a digit saved as a picture. (In process: the export above ran the
    # command line already.)
    figures = []
    for path in (tmp_path / "model.h5", run / "best.h5"):
        assert evaluate.main([str(path), "--json", "--data", str(mnist_h5)]) == 0
        figures.append(json.loads(capsys.readouterr().out))
    assert figures[0]["acc"] == figures[1]["acc"] and figures[0]["loss"] == figures[1]["loss"]
    assert ck._main([str(tmp_path / "model.h5")]) == 0
    assert "model file exported from" in capsys.readouterr().out
    Image.fromarray(images[0]).save(tmp_path / "digit.png")
    lines = []
    for path in (tmp_path / "model.h5", run):
        assert predict.main([str(path), str(tmp_path / "digit.png"), "--json"]) == 0
        lines.append(capsys.readouterr().out)
    assert lines[0] == lines[1] and '"proba"' in lines[0]


def test_a_model_file_cannot_be_resumed_or_overwrite_its_source(tmp_path):
    small_checkpoint(tmp_path / "best.h5")
    ck.export_model(tmp_path / "best.h5", tmp_path / "m.h5")
    with pytest.raises(ExpectedError, match="a model file .* cannot be resumed"):
        ck.load_checkpoint(tmp_path / "m.h5")
    with pytest.raises(ExpectedError, match="is the checkpoint being exported"):
        ck.export_model(tmp_path / "best.h5", tmp_path / "best.h5")
    out = run_job(1, ["export", str(tmp_path / "nope"), str(tmp_path / "x.h5")],
                  module="dist.checkpoint")
    assert out.returncode == 2 and error_lines(out.stderr) == [
        f"error: {tmp_path / 'nope'}: no such checkpoint file or run folder"]
    # Exporting a model file again gives the same weights and keeps the first source.
    again = ck.export_model(tmp_path / "m.h5", tmp_path / "m2.h5")
    first = ck.load_checkpoint(tmp_path / "m.h5", resumable=False)
    assert np.array_equal(again.theta, first.theta) and again.source == first.source
    assert dataclasses.asdict(again)["kind"] == ck.MODEL
