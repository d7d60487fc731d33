"""All of a process's cores for one layer: its chunks of samples split over Python threads.

Why it exists.  A process given 2 BLAS threads (1 process x 2 threads) used its second core only
inside the matrix products; the im2col copies, the batch-norm passes and every other numpy
operation ran on one core while the other waited -- about half of a step of the best preset.
numpy releases the GIL inside copies, elementwise operations and BLAS calls, so threads that
each take every other chunk of samples keep all the cores busy with all of the work.  While
they run, BLAS does one thread per caller: its own threads would only compete with ours (and
OpenBLAS's threads synchronise badly on a loaded machine: measured on best's 3x3 convolution,
im2col + GEMM with 2 BLAS threads took 1.4x as long as 2 Python threads of 1 BLAS thread each).

The number of workers is the number of BLAS threads the process was given (threadpoolctl's
limit, as dist.train and launch.bench set it): 1 in a 2-ranks x 1-thread launch, where
everything stays serial and unchanged.

Determinism: worker w always takes chunks w, w + n, w + 2n, ... (n workers), and a caller that
sums over chunks keeps one partial sum per worker and adds them in worker order, so a run is
bitwise repeatable for a given thread count (tests/test_core_fast_paths.py).

    from core.parallel import run_chunks
    run_chunks(lambda w, i, j, first: ..., [(0, 4), (4, 8), ...])
"""
from concurrent.futures import ThreadPoolExecutor

import numpy  # noqa: F401 -- loads the BLAS library before threadpoolctl looks for it
from threadpoolctl import ThreadpoolController

_BLAS = []            # [the BLAS library's threadpoolctl controller, or None]; found once
_POOL = {}            # workers -> ThreadPoolExecutor, made once


def _blas():
    if not _BLAS:
        found = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        _BLAS.append(found[0] if found else None)
    return _BLAS[0]


def workers():
    """How many threads a layer may use: the BLAS thread count of this process (~1 us)."""
    blas = _blas()
    return max(1, blas.num_threads) if blas is not None else 1


def run_chunks(work, chunks):
    """Call work(w, i, j, first) for every (i, j) in chunks, worker w in 0..n-1 taking
    chunks w, w + n, ...; first is True for a worker's first chunk.  Returns n, the number of
    workers used (so that callers know how many per-worker partial sums to add)."""
    n = min(workers(), len(chunks))
    if n <= 1:
        for k, (i, j) in enumerate(chunks):
            work(0, i, j, k == 0)
        return 1
    blas = _blas()
    threads = blas.num_threads
    blas.set_num_threads(1)
    try:
        pool = _POOL.get(n) or _POOL.setdefault(n, ThreadPoolExecutor(n - 1))
        others = [pool.submit(_worker, work, w, chunks[w::n]) for w in range(1, n)]
        try:
            _worker(work, 0, chunks[0::n])                # this thread is worker 0
        finally:
            errors = [f.exception() for f in others]      # waits for every worker
    finally:
        blas.set_num_threads(threads)
    for error in errors:
        if error is not None:
            raise error
    return n


def _worker(work, w, chunks):
    for k, (i, j) in enumerate(chunks):
        work(w, i, j, k == 0)
