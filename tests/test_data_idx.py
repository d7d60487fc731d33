"""IDX parsing and checksums: good files round-trip, every bad file is one clear DataError."""

import gzip
import struct

import numpy as np
import pytest

from data import checksums
from data.checksums import NAMES, TRAIN_LABELS
from data.errors import DataError
from data.idx import idx_bytes, parse_idx, read_bytes, read_idx, write_idx
from data.verify import load_file


def one_line_naming(exc_info, label):
    message = str(exc_info.value)
    assert str(label) in message
    assert "\n" not in message
    return message


@pytest.fixture
def images():
    return np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)


@pytest.fixture
def labels():
    return np.array([7, 2, 1, 0, 4, 9], dtype=np.uint8)


@pytest.mark.parametrize("file_name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_roundtrip_gz_and_raw(tmp_path, images, file_name):
    path = tmp_path / file_name
    write_idx(path, images)
    assert path.read_bytes().startswith(b"\x1f\x8b") == file_name.endswith(".gz")
    back = read_idx(path, "images")
    assert back.dtype == np.uint8 and back.shape == (5, 28, 28)
    np.testing.assert_array_equal(back, images)


def test_header_layout(labels):
    data = idx_bytes(labels)
    assert data[:4] == b"\x00\x00\x08\x01"
    assert struct.unpack(">I", data[4:8]) == (6,)
    assert data[8:] == labels.tobytes()


def test_gzip_detected_by_content_not_name(tmp_path, labels):
    gz_named_raw = tmp_path / "labels.gz"          # raw bytes behind a .gz name
    write_idx(gz_named_raw, labels, compress=False)
    raw_named_gz = tmp_path / "labels-idx1-ubyte"  # gzip bytes behind a raw name
    write_idx(raw_named_gz, labels, compress=True)
    for path in (gz_named_raw, raw_named_gz):
        np.testing.assert_array_equal(read_idx(path, "labels"), labels)


def bad(content, kind, label="train-labels-idx1-ubyte.gz"):
    with pytest.raises(DataError) as exc_info:
        parse_idx(content, label, kind)
    return one_line_naming(exc_info, label)


def test_wrong_magic(labels, images):
    assert "magic" in bad(b"\x12\x34" + idx_bytes(labels)[2:], "labels")
    # An image file handed over as labels: 3 dimensions, expected 1.
    message = bad(idx_bytes(images), "labels")
    assert "3 dimensions, expected 1" in message and "0x00000803" in message
    # Type code other than unsigned byte (0x0D = float).
    assert "type code 0x0d" in bad(b"\x00\x00\x0d\x01" + idx_bytes(labels)[4:], "labels")


def test_too_short_for_header():
    assert "too short" in bad(b"\x00\x00", "labels")
    assert "truncated IDX header" in bad(b"\x00\x00\x08\x03\x00\x00\x00\x05", "images")


def test_truncated(images):
    message = bad(idx_bytes(images)[:-100], "images", "t10k-images-idx3-ubyte")
    assert "truncated" in message and "declares 5 images" in message


def test_trailing_bytes(labels):
    message = bad(idx_bytes(labels) + b"\x00\x01", "labels")
    assert "2 trailing bytes" in message


def test_count_mismatch(labels):
    header = b"\x00\x00\x08\x01" + struct.pack(">I", 4)     # declares 4, holds 6
    assert "trailing" in bad(header + labels.tobytes(), "labels")


def test_label_out_of_range():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 10, 9], dtype=np.uint8)
    message = bad(idx_bytes(labels), "labels")
    assert message == "train-labels-idx1-ubyte.gz: label 10 at index 7 is outside 0-9"


def test_wrong_image_dimensions():
    message = bad(idx_bytes(np.zeros((3, 28, 27), np.uint8)), "images", "a-images")
    assert message == "a-images: images are 28x27, expected 28x28"


def test_corrupt_gzip(tmp_path, images):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-30])   # cut-off download
    with pytest.raises(DataError) as exc_info:
        read_bytes(path)
    assert "corrupt or truncated gzip" in one_line_naming(exc_info, path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as exc_info:
        read_idx(tmp_path / "nope.gz", "labels")
    one_line_naming(exc_info, tmp_path / "nope.gz")


def test_checksum_mismatch_names_file(labels):
    content = idx_bytes(labels)
    with pytest.raises(DataError) as exc_info:
        load_file(TRAIN_LABELS, content, "/some/dir/train-labels-idx1-ubyte.gz")
    assert "SHA-256" in one_line_naming(exc_info, "/some/dir/train-labels-idx1-ubyte.gz")
    # With the matching checksum injected, the same bytes are accepted.
    expected = {TRAIN_LABELS: checksums.sha256_hex(content)}
    array, sha = load_file(TRAIN_LABELS, content, "x", expected)
    assert sha == expected[TRAIN_LABELS]
    np.testing.assert_array_equal(array, labels)


def test_fingerprint_is_sha256_of_sha256sums_listing():
    # The canonical fingerprint equals `sha256sum SHA256SUMS.uncompressed` of a local copy.
    listing = "".join(f"{checksums.SHA256[n]}  {n}\n" for n in sorted(NAMES))
    assert checksums.fingerprint(checksums.SHA256) == checksums.sha256_hex(listing.encode())
    assert checksums.fingerprint(checksums.SHA256).startswith("474311efcf1fd213")


def test_canonical_constants_match_shared_copy():
    from tests.conftest import SHARED_MNIST
    sums = SHARED_MNIST / "SHA256SUMS.uncompressed"
    if not sums.is_file():
        pytest.skip(f"{sums} not present")
    listed = dict(reversed(line.split()) for line in sums.read_text().splitlines())
    assert listed == checksums.SHA256
