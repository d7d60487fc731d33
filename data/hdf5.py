"""The prepared MNIST file: writing it atomically, validating it, reading a split.

Layout (all uint8, chunked, uncompressed -- see below):

    /train/images   (60000, 28, 28)     /train/labels   (60000,)
    /test/images    (10000, 28, 28)     /test/labels    (10000,)

    root attributes
        format          "mpigrad-mnist"        format_version   1
        source          where the data came from ("folder /x", "mirror https://...", "pypi ...")
        sha256:<name>   SHA-256 of the raw IDX contents of each of the four files
        fingerprint     checksums.fingerprint() of those four: one string that names the data

`h5ls -r` and `h5dump -A` read it; nothing here is specific to Python.

Why chunked and uncompressed: every epoch each rank reads a scattered 1/n of the training rows
(shards.py). Chunks of 1024 images (784 KiB) keep whole-file scans sequential while a chunk
still fits h5py's default 1 MiB chunk cache; compression would shrink 55 MB to ~10 MB but
costs a decompression of every chunk on every epoch read, on every rank.

Writing goes to a temporary file in the target directory, which is flushed, fsync'ed, closed,
and then renamed over the target with os.replace -- readers see either no file or a complete
one, even if the writer is killed.

`open_mnist` validates a file, turning every h5py failure into one DataError line that names
the file: unreadable or truncated HDF5, missing dataset, wrong shape or dtype, labels outside
0-9, a missing or inconsistent fingerprint, and (with `deep=True`) contents that no longer
match the recorded SHA-256.

Run `python -m data.hdf5 FILE` to validate a file and print its summary.
"""

import glob
import hashlib
import os
import secrets
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import checksums
from .checksums import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from .errors import DataError
from .idx import check_labels, idx_header
from .stale import is_stale, owner
from .verify import Mnist

FORMAT, FORMAT_VERSION = "mpigrad-mnist", 1
LAYOUT = {"/train/images": TRAIN_IMAGES, "/train/labels": TRAIN_LABELS,
          "/test/images": TEST_IMAGES, "/test/labels": TEST_LABELS}
SIZES = {"train": 60000, "test": 10000}     # what genuine MNIST must have
CHUNK_ROWS = 1024


def sha_attr(name: str) -> str:
    return f"sha256:{name}"


def write_mnist(path: str | os.PathLike, mnist: Mnist) -> Path:
    """Write `mnist` to `path` atomically (any sizes: tests write small files too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique hidden name next to the target (same file system, so the rename is atomic);
    # h5py creates it with the usual permissions, unlike mkstemp's 0600.
    remove_dead_temporaries(path)
    host, pid = owner()
    tmp = path.parent / f".{path.name}.{host}.{pid}.{secrets.token_hex(4)}.tmp"
    try:
        with h5py.File(tmp, "x") as f:
            for dataset, name in LAYOUT.items():
                array = mnist.arrays[name]
                chunks = (min(CHUNK_ROWS, len(array)) or 1,) + array.shape[1:]
                f.create_dataset(dataset, data=array, dtype=np.uint8, chunks=chunks)
                f.attrs[sha_attr(name)] = mnist.sha256[name]
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["source"] = mnist.source
            f.attrs["fingerprint"] = mnist.fingerprint
            f.flush()
        with open(tmp, "rb+") as handle:   # the data must be on disk before the rename is
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_dead_temporaries(path: Path) -> list[Path]:
    """Delete the hidden temporaries of writes to ``path`` whose process died (a killed
    data.prepare leaves ~55 MB): ``.<name>.<host>.<pid>.<random>.tmp`` of this host and a pid
    that no longer runs. A live writer's temporary, or another host's, is left alone."""
    removed = []
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        parts = tmp.name[len(prefix):-len(".tmp")].rsplit(".", 2)
        host, pid = (parts[0], parts[1]) if len(parts) == 3 else (owner()[0], parts[0])
        if pid.isdigit() and is_stale(host, int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _reason(exc: Exception) -> str:
    """h5py's message, shortened to its informative part (it nests HDF5's own text)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "(" in text and text.endswith(")"):
        text = text[text.index("(") + 1:-1]
    return text


@contextmanager
def open_h5(path: str | os.PathLike):
    """h5py.File(path, "r"), with a missing/unreadable/truncated file as a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({_reason(exc)})") from None
    try:
        yield f
    except (OSError, KeyError, RuntimeError) as exc:
        # Raised by h5py while reading a damaged file (bad chunk, cut-off data).
        raise DataError(f"{path}: damaged HDF5 file ({_reason(exc)})") from None
    finally:
        f.close()


@dataclass
class MnistInfo:
    path: Path
    fingerprint: str
    source: str
    sizes: dict          # split -> number of samples
    sha256: dict         # IDX file name -> hex


def open_mnist(path: str | os.PathLike, expected_sizes: dict | None = SIZES,
               expected_sha256: dict | None = checksums.SHA256, deep: bool = True) -> MnistInfo:
    """Validate the prepared file at `path`; return its summary (see module docstring).

    The defaults demand genuine MNIST. Small test files pass `expected_sizes=None` (any
    number of samples, as long as images and labels agree) and `expected_sha256=None` (any
    data whose attributes and contents agree). `deep=False` skips re-hashing the contents
    (~0.2 s) for callers that only need the fingerprint.
    """
    path = Path(path)
    with open_h5(path) as f:
        sizes = {}
        for dataset, name in LAYOUT.items():
            split = dataset.split("/")[1]
            item = f.get(dataset)
            if not isinstance(item, h5py.Dataset):
                raise DataError(f"{path}: dataset {dataset} is missing")
            if expected_sizes is not None:
                n = expected_sizes[split]
            elif split in sizes:        # labels: as many as the split's images
                n = sizes[split]
            else:
                n = item.shape[0] if item.ndim else 0
            shape = (n, 28, 28) if dataset.endswith("images") else (n,)
            if item.shape != shape:
                raise DataError(f"{path}: dataset {dataset} has shape {item.shape}, "
                                f"expected {shape}")
            if item.dtype != np.uint8:
                raise DataError(f"{path}: dataset {dataset} has dtype {item.dtype}, "
                                f"expected uint8")
            sizes[split] = n
            if dataset.endswith("labels"):
                check_labels(item[()], f"{path}: dataset {dataset}")

        attrs = {key: f.attrs[key] for key in f.attrs}
        for key in ["fingerprint", "source"] + [sha_attr(name) for name in LAYOUT.values()]:
            if key not in attrs:
                raise DataError(f"{path}: missing attribute '{key}' (not written by "
                                f"data.prepare?)")
        sha256 = {name: str(attrs[sha_attr(name)]) for name in LAYOUT.values()}
        fingerprint = str(attrs["fingerprint"])
        if fingerprint != checksums.fingerprint(sha256):
            raise DataError(f"{path}: attribute fingerprint {fingerprint[:16]}... does not "
                            f"match the file's sha256 attributes")
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise DataError(f"{path}: sha256 attributes are not those of genuine MNIST "
                            f"(fingerprint {fingerprint[:16]}...)")
        if deep:
            for dataset, name in LAYOUT.items():
                if _content_sha256(f[dataset]) != sha256[name]:
                    raise DataError(f"{path}: dataset {dataset} does not match its recorded "
                                    f"SHA-256 (modified or corrupt file)")
        return MnistInfo(path, fingerprint, str(attrs["source"]), sizes, sha256)


def _content_sha256(dataset: h5py.Dataset) -> str:
    """SHA-256 of the IDX byte stream (header + data) that `dataset` holds, read in blocks."""
    digest = hashlib.sha256(idx_header(dataset.shape))
    for start in range(0, dataset.shape[0], 8 * CHUNK_ROWS):
        digest.update(dataset[start:start + 8 * CHUNK_ROWS].tobytes())
    return digest.hexdigest()


def read_arrays(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of `split` ("train" or "test") in memory."""
    with open_h5(path) as f:
        return f[f"/{split}/images"][()], f[f"/{split}/labels"][()]


if __name__ == "__main__":
    try:
        info = open_mnist(sys.argv[1])
        print(f"{info.path}: valid; {info.sizes}; source {info.source}; "
              f"fingerprint {info.fingerprint}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
