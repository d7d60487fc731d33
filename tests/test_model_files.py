"""Model files, checkpoints and ensemble folders meet one contract wherever they are read
(dist/modelfile.py): random corruptions of a real checkpoint and of a model file are refused in
one line naming the file, with a non-zero exit and nothing changed on disk; and one test for
each cause issue 29 found (a wrong loss name, negative batch-norm variances, a spec that does
not match theta, a fingerprint from other data, the shipped ensemble folder, bad options).

In process and fast: the files are written by dist.checkpoint from a real model of the tests'
small network (batch norm, so the statistics matter), without training.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import socket

import h5py
import numpy as np
import pytest
from PIL import Image

from dist import checkpoint as ck
from dist import ensemble, evaluate
from dist.errors import ExpectedError
from launch import predict, serve
from tests.test_dist_checkpoint import small_checkpoint

SEED, DRAWS = 29, 40            # fixed: a failure is reproducible; bounded: a second or two
SHIPPED = predict.SHIPPED_MODELS


def folder_hash(folder) -> str:
    """One hash of every file's name and bytes under `folder`."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def contents(path) -> tuple | None:
    """What a reader can see of an HDF5 file: its datasets' and attributes' values (None if
    h5py cannot read it). Equal contents: the damage touched nothing a reader reads."""
    try:
        with h5py.File(path, "r") as f:
            return (tuple((k, f[k][...].tobytes()) for k in sorted(f)),
                    tuple((k, repr(f.attrs[k])) for k in sorted(f.attrs)))
    except Exception:   # any failure to read counts as "changed"
        return None


@pytest.fixture
def files(tmp_path):
    """A training checkpoint and the model file exported from it, in their own folders, and
    a digit picture to classify."""
    run, shipped = tmp_path / "run", tmp_path / "model"
    run.mkdir(), shipped.mkdir()
    small_checkpoint(run / "ckpt-e003-s00000.h5")
    ck.export_model(run / "ckpt-e003-s00000.h5", shipped / "model.h5")
    digit = np.zeros((28, 28), np.uint8)
    digit[5:23, 12:16] = 255
    Image.fromarray(digit).save(tmp_path / "digit.png")
    return run / "ckpt-e003-s00000.h5", shipped / "model.h5", tmp_path / "digit.png"


def read_spec_and_config(f):
    return json.loads(f.attrs["spec"]), json.loads(f.attrs["config"])


def running_var_index(f) -> int:
    """Where the first batch-norm layer's running variance starts in /state (after its
    running mean: core/norm.py's state_shapes order)."""
    spec = json.loads(f.attrs["spec"])
    conv_out = next(layer["out"] for layer in spec if layer["type"] == "conv")
    return conv_out


def corrupt(path, rng) -> str:
    """Damage `path` in one randomly drawn way; returns what was done (for the assertion
    message)."""
    how = rng.choice(["flip", "truncate", "del_attr", "del_dataset", "spec", "loss", "theta",
                      "variance", "nan", "fingerprint", "config_layers", "counter"])
    if how == "flip":
        data = bytearray(path.read_bytes())
        offsets = rng.integers(0, len(data), rng.integers(1, 9))
        for offset in offsets:
            data[offset] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(data))
        return f"flip bytes at {sorted(offsets.tolist())}"
    if how == "truncate":
        size = path.stat().st_size
        keep = int(rng.integers(0, size))
        with open(path, "r+b") as fh:
            fh.truncate(keep)
        return f"truncate to {keep} of {size} bytes"
    with h5py.File(path, "a") as f:
        if how == "del_attr":
            # not the checksum: without one a file is an older file, and read as such
            key = str(rng.choice(sorted(k for k in f.attrs if k != "checksum")))
            del f.attrs[key]
            return f"delete attribute {key}"
        if how == "del_dataset":
            key = str(rng.choice(sorted(f)))
            del f[key]
            return f"delete /{key}"
        if how == "spec":
            spec, _ = read_spec_and_config(f)
            dense = [i for i, layer in enumerate(spec) if layer["type"] == "dense"][0]
            choice = int(rng.integers(0, 3))
            if choice == 0:
                spec[dense]["out"] += 1                     # does not match theta
            elif choice == 1:
                spec[0]["type"] = "convolution"             # unknown layer name
            else:
                spec = spec[:-1]                            # no longer ends in 10 scores
            f.attrs["spec"] = json.dumps(spec)
            return f"spec change {choice}"
        if how == "loss":
            _, config = read_spec_and_config(f)
            config["model"]["loss"] = str(rng.choice(["xentropy", "", "MSE", "hinge"]))
            f.attrs["config"] = json.dumps(config)
            return f"loss {config['model']['loss']!r}"
        if how == "theta":
            theta = f["theta"][...]
            del f["theta"]
            cut = int(rng.integers(1, 100))
            f["theta"] = theta[:-cut] if rng.random() < 0.5 else np.append(theta, theta[:cut])
            return f"theta length changed by {cut}"
        if how == "variance":
            name = "ema_state" if "ema_state" in f else "state"
            f[name][running_var_index(f)] = -float(rng.uniform(0.01, 5))
            return f"negative variance in /{name}"
        if how == "nan":
            name = str(rng.choice(sorted(f)))
            f[name][int(rng.integers(0, f[name].size))] = rng.choice([np.nan, np.inf, -np.inf])
            return f"non-finite value in /{name}"
        if how == "fingerprint":
            f.attrs["data_fingerprint"] = str(rng.choice(["", "not-a-hash", "F" * 64, "0" * 63]))
            return f"fingerprint {f.attrs['data_fingerprint']!r}"
        if how == "config_layers":
            _, config = read_spec_and_config(f)
            config["model"]["layers"] = config["model"]["layers"][:-1]
            f.attrs["config"] = json.dumps(config)
            return "config's model.layers not the spec's network"
        f.attrs["epoch"] = int(f.attrs["epoch"]) + int(rng.integers(1, 5))  # "counter"
        return "epoch changed (a plausible value: only the checksum tells)"


def one_line_or_unchanged(path, pristine_contents, code, out, err, pristine_out, what):
    lines = [line for line in err.splitlines() if line.strip()]
    if contents(path) == pristine_contents:   # the damage hit bytes nobody reads
        assert code == 0 and out == pristine_out, what
        return "unchanged"
    assert code == 2, (what, code, err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), (what, lines)
    assert "Traceback" not in err
    return "refused"


@pytest.mark.parametrize("which", ["checkpoint", "model file"])
def test_random_corruptions_are_one_line_and_change_nothing(files, capsys, which):
    """DRAWS random corruptions, each of a fresh copy, read by the tool that reads that kind:
    the describe/resume load for a checkpoint, launch.predict for a model file."""
    ckpt, model, digit = files
    source = ckpt if which == "checkpoint" else model
    pristine = source.with_name("pristine.h5")
    shutil.copy(source, pristine)
    pristine_contents = contents(pristine)

    def read(path) -> int:
        if which == "checkpoint":
            code = ck._main([str(path)])
            if code == 0:   # the describe line passed: resume's load must agree
                ck.load_checkpoint(path)
            return code
        return predict.main([str(path), str(digit), "--json"])

    assert read(source) == 0
    pristine_out = capsys.readouterr().out.replace(str(source), "PATH")
    rng = np.random.default_rng(SEED)
    outcomes = {"refused": 0, "unchanged": 0}
    for _ in range(DRAWS):
        shutil.copy(pristine, source)
        what = corrupt(source, rng)
        before = folder_hash(source.parent)
        code = read(source)
        captured = capsys.readouterr()
        outcome = one_line_or_unchanged(source, pristine_contents, code,
                                        captured.out.replace(str(source), "PATH"),
                                        captured.err, pristine_out, what)
        outcomes[outcome] += 1
        assert folder_hash(source.parent) == before, what
    # Almost every draw damages something read; those are all refused.
    print(which, outcomes)   # with -s: how many draws each way
    assert outcomes["refused"] >= DRAWS - 5, outcomes


def test_each_field_is_named(files, mnist_h5, capsys):
    """One cause each: the line names the file and the field."""
    ckpt, model, _ = files
    cases = {
        "model.loss='hinge' is not a known loss": lambda f, spec, cfg: (
            cfg["model"].update(loss="hinge"), f.attrs.__setitem__("config", json.dumps(cfg))),
        "has a negative running variance": lambda f, spec, cfg: f["state"].__setitem__(
            running_var_index(f), -1.0),
        "but its attribute spec": lambda f, spec, cfg: (
            spec[-1].update(out=11), spec.append({"type": "dense", "out": 10}),
            f.attrs.__setitem__("spec", json.dumps(spec))),
        "unknown type 'convolution'": lambda f, spec, cfg: (
            spec[0].update(type="convolution"), f.attrs.__setitem__("spec", json.dumps(spec))),
        "data_fingerprint='xyz' is not a SHA-256": lambda f, spec, cfg: f.attrs.__setitem__(
            "data_fingerprint", "xyz"),
        "/theta contains NaN": lambda f, spec, cfg: f["theta"].__setitem__(0, np.nan),
        "checksum does not match": lambda f, spec, cfg: f["theta"].__setitem__(
            0, f["theta"][0] + 1),
    }
    for words, damage in cases.items():
        path = model.with_name("m.h5")
        shutil.copy(model, path)
        with h5py.File(path, "a") as f:
            damage(f, *read_spec_and_config(f))
        before = folder_hash(path.parent)
        for command in (lambda: predict.main([str(path), str(files[2])]),
                        lambda: evaluate.main([str(path), "--data", str(mnist_h5)]),
                        lambda: ck._main(["export", str(path), str(path.with_name("x.h5"))])):
            assert command() == 2, words
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"error: {path}:") and words in err and "\n" not in err, err
        assert folder_hash(path.parent) == before and not path.with_name("x.h5").exists()


def test_a_model_of_other_data_is_refused_where_a_figure_depends_on_it(files, mnist_h5, capsys):
    _, model, digit = files   # trained on data of fingerprint "fff...f"
    assert evaluate.main([str(model), "--data", str(mnist_h5)]) == 2
    assert "trained on other data" in capsys.readouterr().err
    assert predict.main([str(model), str(digit)]) == 0      # a prediction is no figure of data
    fingerprint = ensemble.open_mnist(mnist_h5).fingerprint
    with pytest.raises(ExpectedError, match="trained on other data"):
        ensemble.ensemble_accuracy([model], np.zeros((2, 28, 28), np.uint8), np.zeros(2),
                                   fingerprint)


def test_predict_and_serve_open_every_folder_kind_ensemble_writes(tmp_path, files):
    """The shipped ensemble (ensemble.json listing snapshots), one of its members (a run folder
    with snapshots only), a model file, a run folder with best.h5, an ensemble being trained
    (member folders, no ensemble.json) and a run folder with checkpoints only."""
    ckpt, model, _ = files
    run = ckpt.parent
    in_training = tmp_path / "ens"
    for m in range(2):
        (in_training / f"member-{m}").mkdir(parents=True)
        shutil.copy(model, in_training / f"member-{m}" / "best.h5")
    kinds = {SHIPPED / "ensemble": 3, SHIPPED / "ensemble" / "member-0": 3, model: 1,
             SHIPPED / "best": 1, in_training: 2, run: 1}
    for folder, count in kinds.items():
        assert predict.is_model_path(str(folder)), folder
        assert len(predict.Classifier(folder).models) == count, folder
    listing = json.loads((SHIPPED / "ensemble" / "ensemble.json").read_text())
    assert predict.model_files(SHIPPED / "ensemble") == [SHIPPED / "ensemble" / m
                                                         for m in listing["models"]]


@pytest.mark.parametrize("listing, words", [
    ("{not json", "cannot read it"),
    ('{"models": []}', "must be a non-empty list"),
    ('{"models": ["../../best/model.h5"]}', "is outside the folder"),
    ('{"models": ["member-0/snapshot-c09.h5"]}', "no such file"),
])
def test_a_bad_ensemble_listing_is_one_line(tmp_path, capsys, listing, words):
    folder = tmp_path / "ensemble"
    shutil.copytree(SHIPPED / "ensemble", folder)
    (folder / "ensemble.json").write_text(listing)
    assert predict.main([str(folder), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {folder / 'ensemble.json'}") and words in err, err


@pytest.mark.parametrize("args, words", [
    (["--port", "70000"], "--port 70000: must be 1 to 65535"),
    (["--port", "-1"], "--port -1"),
    (["--max-upload-mb", "0"], "--max-upload-mb 0.0: must be more than 0"),
    (["--max-upload-mb", "nan"], "--max-upload-mb nan"),
    (["--max-upload-mb", "inf"], "--max-upload-mb inf"),
    (["--max-upload-mb", "1e9"], "at most 1024"),
])
def test_serve_options_are_checked_before_the_model_loads(tmp_path, capsys, args, words):
    assert serve.main([str(tmp_path / "no-such-model.h5"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --") and words in err and "\n" not in err, err


def test_serve_names_a_port_in_use_in_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main([str(SHIPPED / "best"), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: cannot listen on 127.0.0.1:{port}: Address already in use", err


@pytest.mark.parametrize("top", ["0", "11", "-3"])
def test_predict_top_out_of_range_is_a_usage_error(tmp_path, capsys, top):
    with pytest.raises(SystemExit) as exit:
        predict.main([str(SHIPPED / "best"), str(tmp_path / "x.png"), "--top", top])
    assert exit.value.code == 2 and f"--top {top}: must be 1 to 10" in capsys.readouterr().err


def test_predict_on_a_full_disk_is_one_line(tmp_path, files, capsys, monkeypatch):
    _, model, digit = files
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(predict, "save_preprocessed", full)
    assert predict.main([str(model), str(digit), "--save-preprocessed", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --save-preprocessed") and "No space left" in err \
        and "\n" not in err


def test_ensemble_result_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "ensemble.json").write_text("{}")
    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(type(tmp_path), "write_text", full)
    with pytest.raises(ExpectedError, match=r"\(No space left on device\); the previous one is kept"):
        ensemble.write_result(tmp_path / "ensemble.json", {"val": 1})
    monkeypatch.undo()
    assert (tmp_path / "ensemble.json").read_text() == "{}"
    assert not (tmp_path / "ensemble.json.tmp").exists()
