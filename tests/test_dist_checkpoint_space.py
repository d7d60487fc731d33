"""Checkpoints on a really full disk: a small tmpfs mounted for the test (we are root in CI).

* short of room, the oldest numbered checkpoints go first and the write succeeds;
* best.h5 is a hard link (no space of its own) and survives pruning of its numbered twin;
* with no room even then, the write fails with one line naming what was kept, and no *.tmp
  is left behind; the newest checkpoint still loads;
* a write that the space check lets through but the disk refuses (real ENOSPC from HDF5) is
  the same one line;
* the newest checkpoint that loads is taken for resume, a damaged newer one skipped;
* real training runs on a 1.5 MiB disk (finishes) and on a 600 kB one (one line, then --resume
  finishes once there is room);
* room is never made by deleting a checkpoint that frees nothing (hard-linked to best.h5);
* every other write path -- final.json, data.prepare, export, the TensorBoard replay -- on a
  full disk is one line saying what was kept, with nothing left half-written.
"""
import subprocess

import numpy as np
import pytest

from dist import checkpoint as ck
from dist.errors import ExpectedError
from tests.dist_helpers import REPO, assert_one_line_error, env, run_job, small_run_args

P = 50_095          # parameters: a checkpoint of ~400 kB (theta and velocity)
# The network of those P parameters: a loaded file's spec must match its theta.
SPEC = [{"type": "flatten"}, {"type": "dense", "out": 63}, {"type": "relu"},
        {"type": "dense", "out": 10}]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: room for four checkpoints of 400 kB and some filler."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def state(run_dir, epoch: int, value: float = 1.0) -> ck.Checkpoint:
    theta = np.full(P, value, np.float32)
    return ck.Checkpoint(run_dir / ck.checkpoint_name(epoch, 0), theta, np.zeros(0, np.float32),
                         np.zeros(P, np.float32), epoch, 0, 10 * epoch, 0.5, epoch, 0,
                         {"run": {}, "model": {"loss": "xent"}}, SPEC, "f" * 64, 1)


def fill(folder, leave: int) -> None:
    """Take all the free space but ``leave`` bytes (a file of zeros: tmpfs allocates it)."""
    free = ck.shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


def test_prunes_oldest_first_and_best_is_a_link(small_disk):
    for epoch in (1, 2, 3):
        ck.write_checkpoint(small_disk, state(small_disk, epoch), keep_last=3, best=epoch == 1)
    fill(small_disk, leave=100_000)          # less than one more checkpoint
    ck.write_checkpoint(small_disk, state(small_disk, 4, 4.0), keep_last=3, best=False)
    names = [p.name for p in ck.numbered_checkpoints(small_disk)]
    # ckpt-e001 is best.h5's twin: deleting it would free nothing, so ckpt-e002 made the room
    assert names[-1] == "ckpt-e004-s00000.h5" and "ckpt-e002-s00000.h5" not in names
    (small_disk / "ckpt-e001-s00000.h5").unlink()
    best = ck.load_checkpoint(small_disk / "best.h5")   # its numbered twin is gone: still there
    assert best.epoch == 1
    assert ck.load_newest(small_disk).theta[0] == 4.0


def test_no_room_is_one_line_naming_what_was_kept(small_disk):
    ck.write_checkpoint(small_disk, state(small_disk, 1), keep_last=3, best=True)
    fill(small_disk, leave=100_000)
    with pytest.raises(ExpectedError) as err:
        ck.write_checkpoint(small_disk, state(small_disk, 2), keep_last=3, best=True)
    message = str(err.value)
    assert "\n" not in message
    assert "ckpt-e002-s00000.h5: cannot write checkpoint" in message
    assert "kept ckpt-e001-s00000.h5, best.h5" in message and "--resume" in message
    assert not list(small_disk.glob("*.tmp"))
    assert ck.load_newest(small_disk).epoch == 1


def test_real_enospc_from_hdf5_is_the_same_line(small_disk, monkeypatch):
    ck.write_checkpoint(small_disk, state(small_disk, 1), keep_last=3, best=True)
    fill(small_disk, leave=100_000)
    monkeypatch.setattr(ck, "expected_size", lambda c: 0)   # the check passes; the disk refuses
    with pytest.raises(ExpectedError) as err:
        ck.write_checkpoint(small_disk, state(small_disk, 2), keep_last=3, best=True)
    assert "cannot write checkpoint" in str(err.value) and "kept ckpt-e001" in str(err.value)
    assert not list(small_disk.glob("*.tmp"))


def test_resume_takes_the_newest_that_loads(tmp_path):
    for epoch in (1, 2):
        ck.write_checkpoint(tmp_path, state(tmp_path, epoch, float(epoch)), 3, best=False)
    (tmp_path / "ckpt-e003-s00000.h5").write_bytes(b"truncated")
    (tmp_path / "ckpt-e002-s00000.h5.tmp").write_bytes(b"killed mid-write")
    notes = []
    assert ck.load_newest(tmp_path, report=notes.append).epoch == 2
    assert len(notes) == 1 and "ckpt-e003-s00000.h5: corrupt or truncated" in notes[0]
    assert [p.name for p in ck.remove_temporaries(tmp_path)] == ["ckpt-e002-s00000.h5.tmp"]


@pytest.mark.parametrize("attr, value, words", [
    ("epoch", -1, "attribute epoch=-1 must be an integer >= 0"),
    ("step", 2.5, "attribute step=2.5 must be an integer >= 0"),
    ("world_size", 0, "attribute world_size=0 must be an integer >= 1"),
    ("best_metric", float("nan"), "attribute best_metric=nan"),
    ("config", "[1, 2]", "config/spec must be a JSON table and list"),
    ("config", "{not json", "corrupt or truncated checkpoint"),
])
def test_malformed_attributes_are_one_line(tmp_path, attr, value, words):
    path = ck.save_checkpoint(tmp_path / "ckpt-e001-s00000.h5", state(tmp_path, 1))
    with ck.h5py.File(path, "a") as f:
        f.attrs[attr] = value
    with pytest.raises(ExpectedError, match=words.replace("[", r"\[")):
        ck.load_checkpoint(path)


def test_absurd_declared_shape_is_refused_before_reading(tmp_path):
    path = tmp_path / "ckpt-e001-s00000.h5"
    ck.save_checkpoint(path, state(tmp_path, 1))
    with ck.h5py.File(path, "a") as f:
        del f["theta"]
        f.create_dataset("theta", shape=(10**12,), dtype=np.float32)  # never written: fill values
    with pytest.raises(ExpectedError, match=r"/theta declares 1,000,000,000,000 values"):
        ck.load_checkpoint(path)


def mounted(tmp_path, size: str):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    return mnt


def test_training_on_a_disk_with_room_for_three_checkpoints(mnist_h5, tmp_path):
    """~410 kB per checkpoint, 1.5 MiB of disk, keep_last=3 and a checkpoint every 5 steps: the
    old order (write, then best.h5, then prune) needed room for five files; now three do (the
    newest, best.h5 once its numbered twin is pruned, the one being written)."""
    disk = mounted(tmp_path, "1536k")
    try:
        done = run_job(2, small_run_args(mnist_h5, disk, "r", "--set", "run.checkpoint_every=5",
                                         "--set", "run.keep_last=3"))
        assert done.returncode == 0, done.stderr
        assert (disk / "r" / "final.json").exists()
        assert ck.load_checkpoint(disk / "r" / "best.h5").epoch >= 1
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_full_disk_stops_with_one_line_and_resume_finishes_after_room_is_made(mnist_h5,
                                                                            tmp_path):
    disk = mounted(tmp_path, "600k")                # one checkpoint fits, a second does not
    try:
        args = small_run_args(mnist_h5, disk, "r", "--set", "run.checkpoint_every=5")
        full = run_job(2, args)
        assert_one_line_error(full, "ckpt-e000-s00010.h5: cannot write checkpoint",
                              "kept ckpt-e000-s00005.h5", f"--resume {disk / 'r'}")
        assert not list((disk / "r").glob("*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)  # room made
        resumed = run_job(2, ["--resume", str(disk / "r")])
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming at epoch 1 step 5" in resumed.stdout
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_room_is_never_made_by_deleting_what_frees_nothing(small_disk):
    """best.h5 is a second name of ckpt-e001: deleting ckpt-e001 frees no byte, so it stays;
    the room comes from ckpt-e002."""
    ck.write_checkpoint(small_disk, state(small_disk, 1), keep_last=3, best=True)
    for epoch in (2, 3):
        ck.write_checkpoint(small_disk, state(small_disk, epoch), keep_last=3, best=False)
    fill(small_disk, leave=100_000)
    ck.write_checkpoint(small_disk, state(small_disk, 4, 4.0), keep_last=3, best=False)
    names = [p.name for p in ck.numbered_checkpoints(small_disk)]
    assert names == ["ckpt-e001-s00000.h5", "ckpt-e003-s00000.h5", "ckpt-e004-s00000.h5"]


def test_no_room_deletes_nothing_that_frees_nothing(small_disk):
    ck.write_checkpoint(small_disk, state(small_disk, 1), keep_last=3, best=True)
    ck.write_checkpoint(small_disk, state(small_disk, 2), keep_last=3, best=False)
    fill(small_disk, leave=10_000)
    with pytest.raises(ExpectedError, match="kept ckpt-e001-s00000.h5, ckpt-e002-s00000.h5, "
                                            "best.h5"):
        ck.write_checkpoint(small_disk, state(small_disk, 3), keep_last=3, best=False)


def test_final_json_on_a_full_disk_is_one_line_and_no_half_file(small_disk):
    from dist import rundir
    (small_disk / "final.json").write_text("{}\n")   # an earlier one: left whole
    fill(small_disk, leave=0)
    with pytest.raises(ExpectedError) as err:
        rundir.write_final(small_disk, {"test_acc": 0.5, "wall_seconds": 1, "best_epoch": 1,
                                        "best_val_acc": 0.5, "pad": "x" * 10_000})
    assert "\n" not in str(err.value) and "final.json: cannot write" in str(err.value)
    assert "--resume" in str(err.value)
    assert (small_disk / "final.json").read_text() == "{}\n" and not list(small_disk.glob("*.tmp"))


def full_disk_cli(small_disk, *command):
    fill(small_disk, leave=0)
    before = {p.name for p in small_disk.iterdir()}
    done = subprocess.run([ck.sys.executable, "-m", *command], capture_output=True, text=True,
                          cwd=REPO, env=env())
    assert {p.name for p in small_disk.iterdir()} == before
    return done


def test_data_prepare_on_a_full_disk(small_disk, mnist_idx_dir):
    done = full_disk_cli(small_disk, "data.prepare", "--out", str(small_disk / "m.h5"),
                         "--source", str(mnist_idx_dir), "--quiet")
    assert_one_line_error(done, f"{small_disk / 'm.h5'}: cannot write (No space left on device)",
                          "nothing written")


def test_export_on_a_full_disk(small_disk, tmp_path):
    source = ck.save_checkpoint(tmp_path / "ckpt-e001-s00000.h5", state(tmp_path, 1))
    done = full_disk_cli(small_disk, "dist.checkpoint", "export", str(source),
                         str(small_disk / "model.h5"))
    assert_one_line_error(done, "model.h5: cannot write the model file (No space left",
                          f"{source} is unchanged")


def test_tensorboard_replay_on_a_full_disk(small_disk):
    pytest.importorskip("tensorboardX")
    (small_disk / "metrics.jsonl").write_text(
        '{"epoch": 1, "train_loss": 1.0, "lr": 0.1, "seconds": {"train": 1.0}}\n')
    done = full_disk_cli(small_disk, "dist.tensorboard", str(small_disk))
    assert_one_line_error(done, "cannot write TensorBoard events (No space left",
                          "metrics.jsonl holds every epoch")
