"""Downloading MNIST from its public HTTPS mirrors.

For each of the four files the mirrors are tried in order. One attempt streams the response
into `<name>.gz.part`, and only when

* as many bytes arrived as the server announced (Content-Length), and
* the decompressed contents parse as MNIST IDX and match the canonical SHA-256,

is the `.part` file renamed to its final name. A download cut short therefore never looks
complete: it is deleted, and either retried or abandoned for the next mirror.

What happens on failure depends on what failed, so that a dead mirror costs little:

    connection dropped, timeout, HTTP 5xx     retried with exponential backoff, then next mirror
    HTTP 4xx, unknown host                    next mirror at once, and the mirror is not asked
                                              for the remaining files
    wrong contents (checksum, bad IDX)        next mirror (this one serves something else)

Run `python -m data.download DIR` to download the four files into DIR.
"""

import os
import socket
import sys
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from .checksums import NAMES
from .errors import DataError
from .idx import decompress
from .verify import Mnist, load_file

# In order of preference; yann.lecun.com comes last because it often refuses robots (403).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
CHUNK = 1 << 16


class Transient(Exception):
    """A failure worth retrying on the same mirror (the next attempt may well succeed)."""


class Permanent(Exception):
    """A failure that retrying will not fix: skip this mirror from now on."""


def _stderr(message: str) -> None:
    print(f"data: {message}", file=sys.stderr, flush=True)


def fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Stream `url` into the file `part`; raise Transient/Permanent on failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "mpigrad-data/1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            length = int(length) if length is not None else None
            received = 0
            with open(part, "wb") as out, tqdm(
                    total=length, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                    disable=not (progress and sys.stderr.isatty()), leave=False) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise Permanent(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):
            raise Permanent(f"unknown host ({exc.reason.strerror})") from None
        raise Transient(str(exc.reason)) from None
    except (HTTPException, OSError) as exc:  # IncompleteRead, reset, timeout (OSError subclasses)
        raise Transient(f"{type(exc).__name__}: {exc}") from None
    # http.client returns b"" rather than raising when the peer closes early, so count.
    if length is not None and received != length:
        raise Transient(f"connection closed after {received} of {length} bytes")


def download_file(name: str, dest_dir: Path, mirrors, dead: set, expected: dict | None,
                  attempts: int, backoff: float, timeout: float, progress: bool, log):
    """Get one file from the first mirror that delivers it intact: (array, sha256, url)."""
    failures = []
    for mirror in mirrors:
        if mirror in dead:
            continue
        url = mirror + name + ".gz"
        part = dest_dir / (name + ".gz.part")
        for attempt in range(attempts):
            try:
                fetch(url, part, timeout, progress)
                content = decompress(part.read_bytes(), url)
                array, sha = load_file(name, content, url, expected)  # DataError if not genuine
                os.replace(part, dest_dir / (name + ".gz"))  # complete and verified
                return array, sha, url
            except Transient as exc:
                reason = f"{url}: {exc}"
                if attempt + 1 < attempts:
                    log(f"{reason}; retrying in {backoff * 2 ** attempt:g} s")
                    time.sleep(backoff * 2 ** attempt)
                continue
            except Permanent as exc:
                reason = f"{url}: {exc}"
                dead.add(mirror)
                break
            except DataError as exc:
                reason = str(exc)
                break
            finally:
                part.unlink(missing_ok=True)
        failures.append(reason)
        log(f"mirror failed: {reason}")
    raise DataError(f"{name}.gz: no mirror delivered it intact ({'; '.join(failures)})")


def download_mnist(dest_dir: str | os.PathLike, mirrors=MIRRORS, expected: dict | None = None,
                   attempts: int = 3, backoff: float = 1.0, timeout: float = 30.0,
                   progress: bool = True, log=_stderr) -> Mnist:
    """Download, verify and keep the four `.gz` files in `dest_dir`; return their arrays."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    mirrors = [m if m.endswith("/") else m + "/" for m in mirrors]
    dead: set = set()
    arrays, sha, used = {}, {}, []
    for name in NAMES:
        arrays[name], sha[name], url = download_file(name, dest_dir, mirrors, dead, expected,
                                                     attempts, backoff, timeout, progress, log)
        used.append(url.rsplit("/", 1)[0] + "/")
    # Usually one mirror served everything; name each one otherwise.
    source = " ".join(dict.fromkeys(used))
    return Mnist(arrays, sha, f"mirror {source}")


if __name__ == "__main__":
    try:
        mnist = download_mnist(sys.argv[1] if len(sys.argv) > 1 else ".")
        _stderr(f"downloaded from {mnist.source}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
