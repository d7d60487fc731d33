"""All of a process's cores for one layer: its chunks of samples split over Python threads.

Why it exists.  A process given 2 BLAS threads (1 process x 2 threads) used its second core only
inside the matrix products; the im2col copies, the batch-norm passes and every other numpy
operation ran on one core while the other waited -- about half of a step of the best preset.
numpy releases the GIL inside copies, elementwise operations and BLAS calls, so threads that
each take every other chunk of samples keep all the cores busy with all of the work.

Why BLAS stays on one thread.  OpenBLAS's own threads do not go to sleep when a call ends: they
spin, waiting for the next call, until OpenBLAS's thread timeout.  Any product left to them (a
dense layer, a bias's column sum) left a spinning thread that took a core from our workers, at
every step.  Measured on best, 1 process x 2 threads: 335 images/s, and 544 with the spinning
cut short (OPENBLAS_THREAD_TIMEOUT=4) and nothing else changed.  So `use_cores(n)` gives n workers
and sets BLAS to one thread per caller for good: every product runs inside a worker, on the
worker's rows (`split_rows`, `run_chunks`), and BLAS's pool is never woken (533 images/s with
the default timeout, launch/docs/benchmarks.md).  Without `use_cores` (a library caller), the
workers are BLAS's thread count, and BLAS is held at one thread only while the workers run.

Determinism: worker w always takes chunks w, w + n, w + 2n, ... (n workers), and a caller that
sums over chunks keeps one partial sum per worker and adds them in worker order, so a run is
bitwise repeatable for a given thread count (tests/test_core_fast_paths.py).

    from core.parallel import run_chunks, use_cores
    use_cores(2)                                   # or: with use_cores(2): ...
    run_chunks(lambda w, i, j, first: ..., [(0, 4), (4, 8), ...])
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy  # noqa: F401 -- loads the BLAS library before threadpoolctl looks for it
from threadpoolctl import ThreadpoolController

_BLAS = []            # [the BLAS library's threadpoolctl controller, or None]; found once
_POOL = {}            # workers -> ThreadPoolExecutor, made once
_CORES = [None]       # [cores given by use_cores], or [None]: BLAS's thread count
_ONE = threading.local()   # .on: this thread is one of run_workers' workers: 1 core for it


def _blas():
    if not _BLAS:
        found = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        _BLAS.append(found[0] if found else None)
    return _BLAS[0]


class use_cores:
    """This process uses n cores: n workers split every layer, BLAS runs on one thread per
    caller.  Lasts until `restore()`, or to the end of a `with` block (as threadpoolctl's
    threadpool_limits does)."""

    def __init__(self, n: int):
        blas = _blas()
        self._saved = _CORES[0], (blas.num_threads if blas is not None else None)
        _CORES[0] = max(1, int(n))
        if blas is not None:
            blas.set_num_threads(1)

    def restore(self):
        _CORES[0], threads = self._saved
        if threads is not None:
            _blas().set_num_threads(threads)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


def workers():
    """How many threads a layer may use: 1 inside a worker of run_workers, else use_cores's n,
    else BLAS's thread count (~1 us)."""
    if getattr(_ONE, "on", False):
        return 1
    if _CORES[0] is not None:
        return _CORES[0]
    blas = _blas()
    return max(1, blas.num_threads) if blas is not None else 1


def split_rows(rows: int):
    """One (start, stop) range of rows per worker, as even as can be: for products whose
    operands are already rows (dense layers), where one chunk per worker is enough."""
    n = max(1, min(workers(), rows))
    edges = [rows * w // n for w in range(n + 1)]
    return [(edges[w], edges[w + 1]) for w in range(n)]


def run_chunks(work, chunks):
    """Call work(w, i, j, first) for every (i, j) in chunks, worker w in 0..n-1 taking
    chunks w, w + n, ...; first is True for a worker's first chunk.  Returns n, the number of
    workers used (so that callers know how many per-worker partial sums to add)."""
    n = max(1, min(workers(), len(chunks)))
    run_workers(lambda w: _worker(work, w, chunks[w::n]), n)
    return n


def run_workers(work, n: int):
    """Call work(w) for w in 0..n-1 at once, w = 0 on this thread and the others on the pool's
    threads; each call sees workers() == 1 and BLAS on one thread.  Re-raises the first error
    (after every call has ended).  core/replicas.py runs a whole model per worker with it."""
    if n <= 1:
        return _as_one_worker(work, 0)
    blas = _blas()
    threads = blas.num_threads if blas is not None else 1
    if threads > 1:
        blas.set_num_threads(1)       # only without use_cores: see the module docstring
    try:
        pool = _POOL.get(n) or _POOL.setdefault(n, ThreadPoolExecutor(n - 1))
        others = [pool.submit(_as_one_worker, work, w) for w in range(1, n)]
        try:
            _as_one_worker(work, 0)                       # this thread is worker 0
        finally:
            errors = [f.exception() for f in others]      # waits for every worker
    finally:
        if threads > 1:
            blas.set_num_threads(threads)
    for error in errors:
        if error is not None:
            raise error


def _as_one_worker(work, w):
    outer, _ONE.on = getattr(_ONE, "on", False), True
    try:
        work(w)
    finally:
        _ONE.on = outer


def _worker(work, w, chunks):
    for k, (i, j) in enumerate(chunks):
        work(w, i, j, k == 0)
