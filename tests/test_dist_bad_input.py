"""Each bad input to `dist.train`: one line naming the problem, exit code 2, no file touched."""

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
