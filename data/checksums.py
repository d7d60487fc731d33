"""Canonical checksums of MNIST and the data fingerprint derived from them.

MNIST is four IDX files. What identifies the genuine data is the content of the *uncompressed*
files: the gzip wrappers differ between mirrors (and a re-compressed copy is just as good), so
every source is verified on the bytes after decompression -- or, for sources that do not ship
IDX at all (the CSV files of a PyPI wheel), on the IDX byte stream the decoded arrays
correspond to.

The SHA-256 values below are the published ones (the same as `SHA256SUMS.uncompressed` next to
a local copy).

The *fingerprint* of a data set is the SHA-256 of its checksum list written exactly as
`sha256sum` writes it (lines `<hex>  <name>` sorted by name). For genuine MNIST it therefore is

    sha256sum SHA256SUMS.uncompressed   ->   474311ef...

Checkpoints store the fingerprint so a resumed run can refuse data that changed.

Run `python -m data.checksums FILE...` to print the SHA-256 of the uncompressed contents of
IDX files (gzipped or not).
"""

import hashlib
import sys

from .errors import DataError

# The four files, in the order the HDF5 layout lists them.
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

SHA256 = {
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(name: str, content: bytes, label: str, expected: dict | None = None) -> str:
    """Check the uncompressed `content` of IDX file `name`; return its SHA-256.

    `label` is what the error message calls the file (its path, or a URL). `expected` replaces
    the canonical table, so tests can feed small made-up files through the real code.
    """
    table = SHA256 if expected is None else expected
    actual = sha256_hex(content)
    if actual != table[name]:
        raise DataError(
            f"{label}: SHA-256 of the uncompressed contents is {actual[:16]}..., expected "
            f"{table[name][:16]}... for {name} (corrupt, truncated or not genuine MNIST)")
    return actual


def fingerprint(sha256: dict) -> str:
    """One hex string for the four checksums: the SHA-256 of their `sha256sum` listing."""
    listing = "".join(f"{sha256[name]}  {name}\n" for name in sorted(NAMES))
    return sha256_hex(listing.encode("ascii"))


def main(argv: list[str]) -> int:
    from .idx import read_bytes  # local import: only the command line needs it
    for path in argv:
        print(f"{sha256_hex(read_bytes(path))}  {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
