"""The GEMM ceiling: how fast a training step could be if everything but its matrix products
were free.

The benchmark compares achieved GFLOP/s with the machine's square-matrix GEMM peak.  But a
step's GEMMs are not square: a batch of 128 against 512 units, or 32 output channels of a
convolution.  BLAS runs such shapes below its peak, so part of the gap to the peak is the
shapes themselves, not the code around them.  This module measures that part:

1. `record_matmuls()` records every `np.matmul` call of one real training step: the shapes
   and memory layouts (C order, or a transposed view) of both operands, and whether an `out=`
   buffer was given.  Everything in core/ multiplies matrices through `np.matmul`.
2. `replay_seconds()` runs the same calls again on arrays of the same shapes and layouts, with
   nothing else in between, and returns the fastest time of the whole sequence.

Then "ceiling %peak" = the model's training FLOPs at that speed, over the GEMM peak: the
highest %peak this step can reach with these BLAS calls, if data, elementwise layers, im2col,
communication and the optimizer took no time at all.

    from launch.gemm_ceiling import record_matmuls, replay_seconds
    with record_matmuls() as calls:
        one_training_step()
    seconds = replay_seconds(calls)        # the step's GEMMs alone, best of a few repeats

Used by launch/bench.py (the "ceil%" column); tested by tests/test_launch_bench.py.
"""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MatmulCall:
    a_shape: tuple
    a_layout: str          # "C": C-contiguous; "T": a transposed C array (F-contiguous); "S": other
    b_shape: tuple
    b_layout: str
    dtype: str
    has_out: bool
    thread: int = 0        # which thread called it: 0, 1, ... in order of first call

    @property
    def flops(self) -> int:
        """2 x the multiply-adds of (..., m, k) @ (..., k, n), vectors counted as one row."""
        m = int(np.prod(self.a_shape[:-1])) if len(self.a_shape) > 1 else 1
        k = self.a_shape[-1]
        n = self.b_shape[-1] if len(self.b_shape) > 1 else 1
        batch = int(np.prod(self.b_shape[:-2])) if len(self.b_shape) > 2 else 1
        return 2 * m * k * n * batch


def _layout(a: np.ndarray) -> str:
    if a.flags.c_contiguous:
        return "C"
    return "T" if a.flags.f_contiguous else "S"


@contextlib.contextmanager
def record_matmuls():
    """Within the block, `np.matmul` still computes, and also appends a MatmulCall per call to
    the yielded list, with the thread that made it (core/parallel.py's workers multiply
    their own chunks, in parallel)."""
    calls: list[MatmulCall] = []
    threads: dict[int, int] = {}       # thread ident -> 0, 1, ... (list.append is atomic)
    real = np.matmul

    def recording(a, b, *args, **kwargs):
        a_, b_ = np.asarray(a), np.asarray(b)
        out = kwargs.get("out", args[0] if args else None)
        thread = threads.setdefault(threading.get_ident(), len(threads))
        calls.append(MatmulCall(a_.shape, _layout(a_), b_.shape, _layout(b_), str(a_.dtype),
                                out is not None, thread))
        return real(a, b, *args, **kwargs)

    np.matmul = recording
    try:
        yield calls
    finally:
        np.matmul = real


def _operand(shape: tuple, layout: str, dtype: str, rng) -> np.ndarray:
    """An array of `shape` laid out as recorded ("S", rare, is replayed as C order)."""
    if layout == "T" and len(shape) >= 2:
        base = rng.standard_normal(shape[::-1]).astype(dtype)
        return base.T
    return rng.standard_normal(shape).astype(dtype)


def replay_seconds(calls: list[MatmulCall], repeats: int = 5, start=None, finish=None) -> float:
    """Fastest time of running all `calls` once, in order, on fresh operands of the same
    shapes and layouts; the calls of each recorded thread in a thread of their own, all at
    once, as the step's workers ran them.  Operands with equal shape and layout share one array, as the
    chunks of a convolution share its reused im2col buffer; where the step used different
    arrays, this keeps more in cache, so the ceiling errs on the high side, as a ceiling
    should.

    With several ranks, pass barriers: `start()` runs before each repeat, outside the timing,
    and `finish()` inside it, so that a repeat lasts until the slowest rank is done.  Without
    `finish`, a rank that shares its core with another could time a replay that happened to
    run while the other rank was descheduled: the time of one rank alone."""
    rng = np.random.default_rng(0)
    arrays: dict = {}

    def get(shape, layout, dtype):
        key = (shape, layout, dtype)
        if key not in arrays:
            arrays[key] = _operand(shape, layout, dtype, rng)
        return arrays[key]

    programs: dict[int, list] = {}     # thread -> its calls, in order
    for c in calls:
        a, b = get(c.a_shape, c.a_layout, c.dtype), get(c.b_shape, c.b_layout, c.dtype)
        out = None                      # without out=, numpy allocates, as the step did
        if c.has_out:
            out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
                           + ((a.shape[-2],) if a.ndim > 1 else ())
                           + ((b.shape[-1],) if b.ndim > 1 else ()), c.dtype)
        programs.setdefault(c.thread, []).append((a, b, out))

    def run(program):
        for a, b, out in program:
            np.matmul(a, b, out=out)

    with ThreadPoolExecutor(max(1, len(programs))) as pool:
        def run_all():
            list(pool.map(run, programs.values()))   # waits for every thread
        run_all()                                    # warm-up: pages, threads
        best = np.inf
        for _ in range(repeats):
            if start is not None:
                start()
            t = time.perf_counter()
            run_all()
            if finish is not None:
                finish()
            best = min(best, time.perf_counter() - t)
    return best
