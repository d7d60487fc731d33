"""Reading and writing IDX files, the format MNIST is distributed in.

An IDX file is a tiny header followed by raw array data:

    bytes 0-1   zero
    byte  2     type code; 0x08 means unsigned bytes (the only type MNIST uses)
    byte  3     number of dimensions (1 for labels, 3 for images)
    then        one big-endian uint32 per dimension (count, then rows, columns)
    then        the values, row-major, one byte each

so the label file starts with the "magic number" 0x00000801 and the image file with 0x00000803.
The files usually come gzipped. Whether a file is compressed is decided by its first two bytes
(the gzip magic 1f 8b), never by its name: people rename files, and browsers unpack them.

Every structural problem -- wrong magic, wrong number of dimensions, images that are not 28x28,
fewer or more bytes than the header declares, a label outside 0-9 -- is a one-line `DataError`
naming the file. Checksums are not checked here (see checksums.py): this module answers "is
this a well-formed MNIST-shaped IDX file?", which gives far better messages than a bare
checksum mismatch when a download was cut short.

Run `python -m data.idx FILE...` to print what a file holds.
"""

import gzip
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
UINT8_TYPE = 0x08
IMAGE_SIZE = (28, 28)
NDIM = {"labels": 1, "images": 3}


def decompress(data: bytes, label: str) -> bytes:
    """Return `data` gunzipped if it starts with the gzip magic, else unchanged."""
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        # EOFError: the gzip stream ends early, i.e. a truncated download.
        raise DataError(f"{label}: corrupt or truncated gzip data ({exc})") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """The uncompressed contents of the file at `path`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decompress(data, str(path))


def parse_idx(content: bytes, label: str, kind: str) -> np.ndarray:
    """Decode uncompressed IDX bytes holding MNIST `kind` ("images" or "labels").

    Returns a read-only uint8 array of shape (n,) for labels or (n, 28, 28) for images.
    """
    ndim = NDIM[kind]
    magic = 0x0800 | ndim
    if len(content) < 4:
        raise DataError(f"{label}: {len(content)} bytes is too short for an IDX header")
    zero, type_code, got_ndim = struct.unpack(">HBB", content[:4])
    got_magic = int.from_bytes(content[:4], "big")
    if zero != 0:
        raise DataError(f"{label}: magic number 0x{got_magic:08x} is not IDX "
                        f"(expected 0x{magic:08x} for MNIST {kind})")
    if type_code != UINT8_TYPE:
        raise DataError(f"{label}: IDX type code 0x{type_code:02x}, expected 0x08 (unsigned "
                        f"bytes); magic number 0x{got_magic:08x}, expected 0x{magic:08x}")
    if got_ndim != ndim:
        raise DataError(f"{label}: IDX file has {got_ndim} dimensions, expected {ndim} for "
                        f"MNIST {kind} (magic number 0x{got_magic:08x}, expected 0x{magic:08x})")

    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(f"{label}: truncated IDX header ({len(content)} of {header_size} bytes)")
    dims = struct.unpack(f">{ndim}I", content[4:header_size])
    if kind == "images" and dims[1:] != IMAGE_SIZE:
        raise DataError(f"{label}: images are {dims[1]}x{dims[2]}, expected 28x28")

    declared = int(np.prod(dims, dtype=np.int64))
    actual = len(content) - header_size
    if actual < declared:
        raise DataError(f"{label}: truncated: header declares {dims[0]} {kind} "
                        f"({declared} bytes of data) but only {actual} bytes follow")
    if actual > declared:
        raise DataError(f"{label}: {actual - declared} trailing bytes after the {dims[0]} "
                        f"{kind} the header declares (count mismatch)")

    # frombuffer shares memory with `content` (immutable bytes), hence read-only: no copy.
    array = np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(dims)
    if kind == "labels":
        check_labels(array, label)
    return array


def check_labels(labels: np.ndarray, label: str) -> None:
    """Raise if any label is outside 0-9, naming the first offender."""
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(f"{label}: label {labels[bad[0]]} at index {bad[0]} is outside 0-9")


def read_idx(path: str | os.PathLike, kind: str) -> np.ndarray:
    """Read and validate one MNIST IDX file (gzipped or raw)."""
    return parse_idx(read_bytes(path), str(path), kind)


def idx_bytes(array: np.ndarray) -> bytes:
    """The uncompressed IDX byte stream of a uint8 array: header, then the values.

    This is what the canonical checksums are computed over, so it is also how sources that do
    not ship IDX (CSV in a wheel) and the HDF5 file prove they hold the genuine bytes.
    """
    if array.dtype != np.uint8:
        raise TypeError(f"IDX writer supports uint8 only, got {array.dtype}")
    return idx_header(array.shape) + np.ascontiguousarray(array).tobytes()


def idx_header(shape: tuple) -> bytes:
    """The IDX header of a uint8 array of `shape`: magic number, then the dimensions."""
    return struct.pack(f">HBB{len(shape)}I", 0, UINT8_TYPE, len(shape), *shape)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as an IDX file, gzipped if `compress` (default: if the name ends in .gz)."""
    path = Path(path)
    data = idx_bytes(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)


def main(argv: list[str]) -> int:
    for path in argv:
        content = read_bytes(path)
        kind = "labels" if content[3:4] == b"\x01" else "images"
        array = parse_idx(content, path, kind)
        print(f"{path}: {kind} {array.shape} uint8")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
