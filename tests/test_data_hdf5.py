"""The HDF5 file: round trip, atomic writing, and every kind of damage as one DataError line."""

import shutil

import h5py
import numpy as np
import pytest

from data.checksums import NAMES
from data.errors import DataError
from data.hdf5 import LAYOUT, open_mnist, read_arrays, write_mnist

SMALL = dict(expected_sizes=None, expected_sha256=None)


def test_roundtrip(tmp_path, fake_mnist):
    mnist, expected = fake_mnist(600, 100)
    path = write_mnist(tmp_path / "sub" / "m.h5", mnist)
    assert [p.name for p in path.parent.iterdir()] == ["m.h5"]   # no temporary left
    info = open_mnist(path, expected_sizes={"train": 600, "test": 100}, expected_sha256=expected)
    assert info.fingerprint == mnist.fingerprint and info.sha256 == expected
    assert info.sizes == {"train": 600, "test": 100} and info.source == "fake seed 0"
    with h5py.File(path) as f:
        assert f.attrs["format"] == "mpigrad-mnist" and f.attrs["format_version"] == 1
        assert f["/train/images"].chunks == (600, 28, 28)        # capped at the row count
        for dataset, name in LAYOUT.items():
            assert f[dataset].dtype == np.uint8
            np.testing.assert_array_equal(f[dataset][()], mnist.arrays[name])
    images, labels = read_arrays(path, "test")
    np.testing.assert_array_equal(images, mnist.arrays[NAMES[2]])
    np.testing.assert_array_equal(labels, mnist.arrays[NAMES[3]])


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, fake_mnist, small_h5):
    before = small_h5.read_bytes()
    mnist, _ = fake_mnist(10, 10)
    del mnist.arrays[NAMES[3]]          # the writer fails half way through
    with pytest.raises(KeyError):
        write_mnist(small_h5, mnist)
    assert small_h5.read_bytes() == before
    assert [p.name for p in small_h5.parent.iterdir()] == [small_h5.name]


def damaged(path, **kwargs) -> str:
    with pytest.raises(DataError) as exc_info:
        open_mnist(path, **(kwargs or SMALL))
    message = str(exc_info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def edit(path, change):
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def test_small_file_is_valid_only_when_sizes_are_relaxed(small_h5):
    assert open_mnist(small_h5, **SMALL).sizes == {"train": 600, "test": 100}
    message = damaged(small_h5, expected_sha256=None)
    assert "/train/images has shape (600, 28, 28), expected (60000, 28, 28)" in message
    assert "not those of genuine MNIST" in damaged(small_h5, expected_sizes=None)


def test_missing_file(tmp_path):
    assert damaged(tmp_path / "none.h5").endswith("no such file")


def test_garbage(tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(np.random.default_rng(0).bytes(10000))
    assert "not a readable HDF5 file" in damaged(path)


def test_truncated(small_h5):
    data = small_h5.read_bytes()
    small_h5.write_bytes(data[:len(data) // 2])
    assert "HDF5 file" in damaged(small_h5)


def test_missing_dataset(small_h5):
    edit(small_h5, lambda f: f.__delitem__("/test/labels"))
    assert damaged(small_h5).endswith("dataset /test/labels is missing")


def test_wrong_shape(small_h5):
    def shrink(f):
        data = f["/train/images"][:100]
        del f["/train/images"]
        f["/train/images"] = data
    edit(small_h5, shrink)
    message = damaged(small_h5, expected_sizes={"train": 600, "test": 100}, expected_sha256=None)
    assert message.endswith("dataset /train/images has shape (100, 28, 28), "
                            "expected (600, 28, 28)")
    # With relaxed sizes the labels must still agree with the images.
    assert "/train/labels has shape (600,), expected (100,)" in damaged(small_h5)


def test_wrong_image_size(small_h5):
    def crop(f):
        data = f["/test/images"][:, :, :27]
        del f["/test/images"]
        f["/test/images"] = data
    edit(small_h5, crop)
    assert "has shape (100, 28, 27), expected (100, 28, 28)" in damaged(small_h5)


def test_wrong_dtype(small_h5):
    def widen(f):
        data = f["/train/labels"][()].astype(np.int64)
        del f["/train/labels"]
        f["/train/labels"] = data
    edit(small_h5, widen)
    assert damaged(small_h5).endswith("dataset /train/labels has dtype int64, expected uint8")


def test_label_out_of_range(small_h5):
    edit(small_h5, lambda f: f["/test/labels"].__setitem__(3, 12))
    assert damaged(small_h5).endswith("dataset /test/labels: label 12 at index 3 is outside 0-9")


def test_missing_fingerprint(small_h5):
    edit(small_h5, lambda f: f.attrs.__delitem__("fingerprint"))
    assert "missing attribute 'fingerprint'" in damaged(small_h5)


def test_inconsistent_fingerprint(small_h5):
    edit(small_h5, lambda f: f.attrs.__setitem__("fingerprint", "0" * 64))
    assert "does not match the file's sha256 attributes" in damaged(small_h5)


def test_modified_contents(small_h5):
    def flip(f):
        f["/train/images"][5, 10, 10] ^= 1
    edit(small_h5, flip)
    assert "/train/images does not match its recorded SHA-256" in damaged(small_h5)
    open_mnist(small_h5, deep=False, **SMALL)      # the shallow check does not look


def test_real_file_is_valid_and_genuine(mnist_h5, tmp_path):
    info = open_mnist(mnist_h5)
    assert info.fingerprint.startswith("474311efcf1fd213")
    assert info.sizes == {"train": 60000, "test": 10000}
    with h5py.File(mnist_h5) as f:
        assert f["/train/images"].chunks == (1024, 28, 28)
    # A copy with a single changed pixel is caught by the deep check.
    copy = shutil.copy(mnist_h5, tmp_path / "copy.h5")
    edit(copy, lambda f: f["/test/images"].__setitem__((0, 0, 0), 1))
    assert "/test/images does not match" in damaged(copy, expected_sizes=None)
