"""Each bad input to `dist.train`: one line naming the problem, exit code 2, no file touched."""

import os

import pytest

from tests.dist_helpers import assert_one_line_error, run_job, small_run_args, snapshot

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("override, fragments", [
    ("optim.lrr=0.1", ["unknown key 'optim.lrr'"]),
    ("train.epochs=many", ["train.epochs must be an integer, got 'many'"]),
    ("optim.lr=-0.1", ["optim.lr=-0.1", "positive"]),
])
def test_config_errors(mnist_h5, tmp_path, override, fragments):
    result = run_job(2, small_run_args(mnist_h5, tmp_path, "x", "--set", override))
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x").exists()


def test_more_ranks_than_samples_in_a_batch(mnist_h5, tmp_path):
    result = run_job(4, small_run_args(mnist_h5, tmp_path, "x", "--set", "train.batch_size=3"))
    assert_one_line_error(result, "train.batch_size=3", "number of ranks (4)")


def test_missing_data_file(tmp_path):
    missing = tmp_path / "nowhere" / "mnist.h5"
    result = run_job(2, small_run_args(missing, tmp_path, "x"))
    assert_one_line_error(result, str(missing))
    assert not missing.exists() and not (tmp_path / "x").exists()


def test_bad_layer_spec_names_the_layer(mnist_h5, tmp_path):
    result = run_job(1, small_run_args(mnist_h5, tmp_path, "x", "--set",
                                       'model.layers=[{type="dense",out=10,size=3}]'))
    assert_one_line_error(result, "size")


@pytest.fixture
def finished_run(mnist_h5, tmp_path):
    args = small_run_args(mnist_h5, tmp_path, "done", "--set", "train.epochs=1")
    result = run_job(1, args)
    assert result.returncode == 0, result.stderr
    return tmp_path / "done"


def test_corrupt_and_truncated_checkpoints_are_refused(finished_run):
    ckpt = finished_run / "ckpt-e001-s00000.h5"
    data = ckpt.read_bytes()
    for name, content in (("truncated", data[: len(data) // 2]), ("garbage", b"\x89HDF" * 99)):
        ckpt.write_bytes(content)
        before = snapshot(finished_run)
        result = run_job(2, ["--resume", str(ckpt), "--set", "train.epochs=2"])
        assert_one_line_error(result, str(ckpt), "corrupt or truncated checkpoint")
        assert snapshot(finished_run) == before, name


def test_checkpoint_of_another_architecture_is_refused(finished_run):
    before = snapshot(finished_run)
    other = '[{type="flatten"},{type="dense",out=10}]'
    result = run_job(1, ["--resume", str(finished_run), "--set", f"model.layers={other}",
                         "--set", "train.epochs=2"])
    assert_one_line_error(result, "another architecture")
    assert snapshot(finished_run) == before


def test_non_finite_weights_in_a_checkpoint_are_refused(finished_run):
    import h5py
    ckpt = finished_run / "ckpt-e001-s00000.h5"
    with h5py.File(ckpt, "r+") as f:
        f["theta"][3] = float("nan")
    before = snapshot(finished_run)
    result = run_job(1, ["--resume", str(ckpt), "--set", "train.epochs=2"])
    assert_one_line_error(result, "NaN or inf")
    assert snapshot(finished_run) == before


def test_nan_loss_stops_before_any_checkpoint(mnist_h5, tmp_path):
    result = run_job(2, small_run_args(mnist_h5, tmp_path, "nan", "--set", "optim.lr=1e30"))
    assert_one_line_error(result, "non-finite loss", "no checkpoint written")
    assert not list((tmp_path / "nan").glob("*.h5"))


def test_existing_run_folder_is_not_overwritten(finished_run, mnist_h5):
    before = snapshot(finished_run)
    result = run_job(1, small_run_args(mnist_h5, finished_run.parent, "done"))
    assert_one_line_error(result, "already exists", "--resume")
    assert snapshot(finished_run) == before


def test_bad_command_line_is_one_line_on_every_rank_count(mnist_h5, tmp_path):
    result = run_job(2, ["--bogus-flag", *small_run_args(mnist_h5, tmp_path, "x")])
    assert_one_line_error(result, "unrecognized argument: --bogus-flag")
    result = run_job(2, ["--resume", str(tmp_path), "--preset", "cnn"])
    assert_one_line_error(result, "--resume takes the config from the checkpoint")


def test_preset_with_config_is_refused(mnist_h5, tmp_path):
    result = run_job(2, ["--config", "launch/configs/mlp.toml",
                         *small_run_args(mnist_h5, tmp_path, "x")])
    assert_one_line_error(result, "--preset cnn with --config launch/configs/mlp.toml")
    assert not (tmp_path / "x").exists()


def test_resume_auto_with_another_preset_is_refused(finished_run):
    before = snapshot(finished_run)
    args = ["--resume", "auto", "--preset", "mlp", "--set", f"run.dir={finished_run.parent}",
            "--set", "run.name=done", "--set", "train.epochs=2"]
    result = run_job(2, args)
    assert_one_line_error(result, f"{finished_run}: holds a run of preset 'cnn', not 'mlp'")
    assert snapshot(finished_run) == before


@pytest.mark.parametrize("threads, fragments", [
    ("1000000", ["run.threads=1000000", "rows of a batch"]),
    ("40", ["run.threads=40", "more than 4 per core"]),
])
def test_unbounded_threads_are_refused_before_anything_is_made(mnist_h5, tmp_path, threads,
                                                               fragments):
    if threads == "40" and (os.cpu_count() or 1) * 4 >= 40:
        pytest.skip("a node with 10 cores or more: 40 threads are allowed")
    result = run_job(1, small_run_args(mnist_h5, tmp_path, "x", "--set", f"run.threads={threads}",
                                       "--set", "train.batch_size=4000"), timeout=60)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["..", ".", "a/b"])
def test_ensemble_name_that_leaves_the_run_folder_is_refused(mnist_h5, tmp_path, name):
    (tmp_path / "runs").mkdir()
    before = snapshot(tmp_path)
    result = run_job(1, ["--members", "2", "--name", name,
                         *small_run_args(mnist_h5, tmp_path / "runs", "x")], module="dist.ensemble")
    assert_one_line_error(result, f"--name {name}: must be a plain folder name")
    assert snapshot(tmp_path) == before and list((tmp_path / "runs").iterdir()) == []
