"""From bytes of any source to verified MNIST arrays.

Each acquisition source (a local folder, an HTTPS mirror, the CSV files in a PyPI wheel) ends
the same way: it has the uncompressed IDX byte stream of each of the four files, and hands it
to `load_file`, which

1. parses it (idx.py: magic, dimensions, length, label range -- precise messages), then
2. compares its SHA-256 with the canonical one (checksums.py -- the actual guarantee).

`Mnist` collects the four verified arrays with their checksums and a note of where they came
from; hdf5.py writes exactly that into the HDF5 file.

Library module; nothing to run.
"""

from dataclasses import dataclass

import numpy as np

from . import checksums
from .checksums import NAMES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from .errors import DataError
from .idx import parse_idx


def kind_of(name: str) -> str:
    return "images" if "images" in name else "labels"


def load_file(name: str, content: bytes, label: str,
              expected: dict | None = None) -> tuple[np.ndarray, str]:
    """Parse and verify the uncompressed IDX `content` of file `name`: (array, sha256)."""
    array = parse_idx(content, label, kind_of(name))
    sha = checksums.verify(name, content, label, expected)
    return array, sha


@dataclass
class Mnist:
    """The four verified MNIST arrays, keyed by IDX file name, and where they came from."""

    arrays: dict[str, np.ndarray]
    sha256: dict[str, str]
    source: str

    def __post_init__(self):
        # Checksums pin each file on its own; this catches a mix of files from two data sets.
        for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
            n_images, n_labels = len(self.arrays[images]), len(self.arrays[labels])
            if n_images != n_labels:
                raise DataError(f"{self.source}: {images} holds {n_images} images but "
                                f"{labels} holds {n_labels} labels")

    @property
    def fingerprint(self) -> str:
        return checksums.fingerprint(self.sha256)


def assemble(contents: dict[str, bytes], labels: dict[str, str], source: str,
             expected: dict | None = None) -> Mnist:
    """Verify the four uncompressed IDX streams `contents` and collect them into a `Mnist`."""
    arrays, sha = {}, {}
    for name in NAMES:
        arrays[name], sha[name] = load_file(name, contents[name], labels[name], expected)
    return Mnist(arrays, sha, source)
