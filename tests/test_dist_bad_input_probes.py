"""The bad inputs of issue 18, each as a user would try it: one line naming the key, file or
value, exit code 2, and nothing written or changed. Training probes run under ``mpirun -n 2``,
so they also prove that only one line appears, not one traceback per rank.
"""
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.dist_helpers import (REPO, assert_one_line_error, env, run_job, small_run_args,
                                snapshot)

pytestmark = pytest.mark.timeout(120)

HUGE = '[{type="flatten"},{type="dense",out=1000000000},{type="relu"},{type="dense",out=10}]'


@pytest.mark.parametrize("override, fragments", [
    ("train.batch_size=60000", ["train.batch_size=60000 is larger than the training set"]),
    ('model.layers=[{type="flatten"},{type="dense",out=7}]',
     ["model.layers: the last layer, 1 (dense), outputs shape (7,)", "10 class scores"]),
    ('model.layers=[{type="conv",out=4,kernel=3},{type="relu"},{type="flatten"}]',
     ["model.layers: the last layer, 2 (flatten), outputs shape (2704,)"]),
    ("schedule.warmup_epochs=inf", ["schedule.warmup_epochs must be a finite number"]),
    ("data.split_seed=-1", ["data.split_seed=-1: must be >= 0"]),
    ("train.seed=-1", ["train.seed=-1: must be >= 0"]),
    (f"model.layers={HUGE}", ["model.layers: layer 1 (dense, output (1000000000,))", "GB"]),
])
def test_training_probe(mnist_h5, tmp_path, override, fragments):
    result = run_job(2, small_run_args(mnist_h5, tmp_path, "x", "--set", override))
    assert_one_line_error(result, *fragments)
    assert list(tmp_path.iterdir()) == [], "something was written"


def test_run_dir_that_is_a_file(mnist_h5, tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    result = run_job(2, small_run_args(mnist_h5, tmp_path / "runs", "x"))
    assert_one_line_error(result, str(tmp_path / "runs"), "cannot create the run folder")
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_read_only_run_dir(mnist_h5, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        result = run_job(2, small_run_args(mnist_h5, ro, "x"))
        assert_one_line_error(result, str(ro / "x"), "Read-only file system")
    finally:
        subprocess.run(["umount", str(ro)], check=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist_h5):
    folder = tmp_path_factory.mktemp("finished")
    done = run_job(1, small_run_args(mnist_h5, folder, "done", "--set", "train.epochs=1"))
    assert done.returncode == 0, done.stderr
    return folder / "done"


def damaged_copy(finished, tmp_path, how: str):
    """A copy of the finished run whose only checkpoint is damaged ``how``."""
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(finished), str(run)], check=True)
    ckpt = run / "ckpt-e001-s00000.h5"
    (run / "best.h5").unlink()
    with h5py.File(ckpt, "a") as f:
        if how == "shape":
            del f["theta"]
            f.create_dataset("theta", shape=(10**12,), dtype=np.float32)
        else:
            f.attrs["epoch"] = -1
    return run, ckpt


def tool(*args, extra_env=None):
    e = env()
    e.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("how, words", [("shape", "/theta declares 1,000,000,000,000 values"),
                                        ("attribute", "attribute epoch=-1 must be an integer")])
@pytest.mark.parametrize("command", ["resume", "evaluate", "predict"])
def test_damaged_checkpoint(finished, tmp_path, mnist_h5, how, words, command):
    run, ckpt = damaged_copy(finished, tmp_path, how)
    before = snapshot(run)
    if command == "resume":     # metrics.jsonl must not be emptied
        result = run_job(2, ["--resume", str(run), "--set", "train.epochs=2"])
    elif command == "evaluate":
        result = tool("dist.evaluate", str(ckpt), "--data", str(mnist_h5))
    else:
        Image.new("L", (28, 28)).save(tmp_path / "digit.png")
        result = tool("launch.predict", str(ckpt), str(tmp_path / "digit.png"))
    assert_one_line_error(result, str(ckpt), words)
    assert snapshot(run) == before


def test_evaluate_does_not_prepare_a_missing_data_file(finished, tmp_path):
    result = tool("dist.evaluate", str(finished), "--data", str(tmp_path / "missing.h5"))
    assert_one_line_error(result, "--data", "missing.h5: no such file")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def digit(tmp_path):
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    return tmp_path / "digit.png"


def test_save_preprocessed_onto_an_existing_file(finished, digit, tmp_path):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    result = tool("launch.predict", str(finished), str(digit), "--save-preprocessed", str(target))
    assert_one_line_error(result, f"--save-preprocessed {target}: exists and is not a folder")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("args, extra_env, words", [
    ((), {"MPIGRAD_MAX_IMAGE_PIXELS": "lots"}, "MPIGRAD_MAX_IMAGE_PIXELS='lots': must be a"),
    (("--max-pixels", "-1"), {}, "--max-pixels='-1': must be a positive whole number"),
])
def test_bad_pixel_limit(finished, digit, args, extra_env, words):
    result = tool("launch.predict", str(finished), str(digit), *args, extra_env=extra_env)
    assert_one_line_error(result, words)
