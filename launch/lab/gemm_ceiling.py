"""The GEMM ceiling: how fast a training step could be if everything but its matrix products
were free.

    python -m launch.lab.bench                      # the "ceil%" column of its table

    from launch.lab.gemm_ceiling import step_gemms, replay_seconds
    seconds = replay_seconds(step_gemms(model, batch=128, copies=2))   # best of a few repeats

The benchmark compares achieved GFLOP/s with the machine's square-matrix GEMM peak.  But a
step's products are not square: a batch of 128 against 512 units, or 32 output channels of a
convolution.  BLAS runs such shapes below its peak, so part of the gap to the peak is the
shapes themselves, not the code around them.  This module measures that part:

1. `step_gemms()` lists the products of one training step, derived from the model's layers
   (not recorded from a run: the list does not depend on how core/ spells a product).  A
   layer that computes y (m, n) = a (m, k) @ W (k, n) does three:

       forward   a @ W        (m, k) @ (k, n)
       dW        a^T @ dy     (k, m) @ (m, n)
       dx        dy @ W^T     (m, n) @ (n, k)     not for the first layer with parameters:
                                                  nobody needs dL/dimage
   Dense:  a = x (B, F), W (F, O).
   Conv2D: the im2col form, a = cols (B*Ho*Wo, kh*kw*Cin), W as (kh*kw*Cin, Cout), in the
           chunks of samples the layer multiplies one after the other (core.layers'
           sample_chunks: a chunk's cols stay in the cache).
   With several copies of the model (core/replicas.py), copy c of n takes rows c, c + n, ...
   of the batch and runs its products on its own thread.
2. `replay_seconds()` runs the products on random arrays of those shapes and layouts, each
   copy's on a thread of its own, with nothing else in between: the fastest of a few repeats.

Then "ceiling %peak" = the model's training FLOPs at that speed, over the GEMM peak: the
highest %peak this step can reach with these BLAS calls, if data, elementwise layers, im2col,
communication and the optimizer took no time at all.

How close the list is to the step.  Its FLOPs are the GEMM part of launch/lab/bench_table.py's
count.  Conv2D computes dx as a convolution of dy with the flipped kernel (core/conv.py): the
same multiply-adds up to the image border, in other shapes; the list keeps the im2col form.
Within a copy the replay shares one array among operands of equal shape and layout, so more
stays in the cache than in the step: the ceiling errs on the high side, as a ceiling should.

Used by launch/lab/bench.py; tested by tests/test_launch_bench.py.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from core.layers import sample_chunks


@dataclass(frozen=True)
class Gemm:
    """One product a @ b of shapes (m, k) and (k, n).  A layout is "C" (a row-major array) or
    "T" (the transpose of one, as x.T is); `copy` is the model copy (thread) that runs it."""
    a_shape: tuple
    a_layout: str
    b_shape: tuple
    b_layout: str
    copy: int = 0

    @property
    def flops(self) -> int:
        """2 x the multiply-adds."""
        (m, k), n = self.a_shape, self.b_shape[1]
        return 2 * m * k * n


def layer_gemms(layer, batch: int, need_dx: bool = True,
                copy: int = 0) -> tuple[list[Gemm], list[Gemm]]:
    """(forward, backward) products of one layer on `batch` samples; two empty lists for a
    layer without matrix products (activations, pooling, batch norm, ...)."""
    if layer.type_name == "dense":
        k, n = layer.param_shapes["W"]                        # W (F, O)
        rows_per_sample, chunks = 1, [(0, batch)]
    elif layer.type_name == "conv":
        kh, kw, cin, n = layer.param_shapes["W"]              # W (kh, kw, Cin, Cout)
        k = kh * kw * cin
        ho, wo, _ = layer.out_shape
        rows_per_sample = ho * wo                             # im2col: a row per output pixel
        chunks = sample_chunks(batch, rows_per_sample * k)
    else:
        return [], []
    forward, backward = [], []
    for start, stop in chunks:
        m = (stop - start) * rows_per_sample
        forward.append(Gemm((m, k), "C", (k, n), "C", copy))           # y = a W
        backward.append(Gemm((k, m), "T", (m, n), "C", copy))          # dW = a^T dy
        if need_dx:
            backward.append(Gemm((m, n), "C", (n, k), "T", copy))      # dx = dy W^T
    return forward, backward


def step_gemms(model, batch: int, copies: int = 1) -> list[Gemm]:
    """The products of one training step on `batch` samples, shared by `copies` copies of the
    model as core/replicas.py shares it: each copy's forward in layer order, then its backward
    from the last layer down to the first with parameters."""
    first = next((i for i, layer in enumerate(model.layers) if layer.param_shapes), None)
    n = max(1, min(copies, batch))
    gemms = []
    for copy in range(n):
        rows = len(range(copy, batch, n))                     # copy c's rows: c, c + n, ...
        layers = [layer_gemms(layer, rows, need_dx=i != first, copy=copy)
                  for i, layer in enumerate(model.layers)]
        gemms += [g for forward, _ in layers for g in forward]
        gemms += [g for _, backward in reversed(layers) for g in backward]
    return gemms


def _operand(shape: tuple, layout: str, rng) -> np.ndarray:
    """A float32 array of `shape`: the transpose of a row-major one ("T"), else row-major."""
    if layout == "T":
        return rng.standard_normal(shape[::-1], dtype=np.float32).T
    return rng.standard_normal(shape, dtype=np.float32)


def replay_seconds(gemms: list[Gemm], repeats: int = 5, start=None, finish=None) -> float:
    """Fastest time of running all `gemms` once, each copy's in order on a thread of its own,
    all copies at once, on random float32 operands: per copy, one array per shape and layout
    and one output buffer per output shape, as the layers reuse theirs.

    With several ranks, pass barriers: `start()` runs before each repeat, outside the timing,
    and `finish()` inside it, so that a repeat lasts until the slowest rank is done.  Without
    `finish`, a rank that shares its core with another could time a replay that happened to
    run while the other rank was descheduled: the time of one rank alone."""
    rng = np.random.default_rng(0)
    arrays = {}                                  # (copy, shape, layout) -> an array

    def array(copy, shape, layout):
        if (copy, shape, layout) not in arrays:
            arrays[copy, shape, layout] = _operand(shape, layout, rng)
        return arrays[copy, shape, layout]

    programs = {}                                # copy -> its products, in order
    for g in gemms:
        out = array(g.copy, (g.a_shape[0], g.b_shape[1]), "out")   # apart from the operands
        programs.setdefault(g.copy, []).append(
            (array(g.copy, g.a_shape, g.a_layout), array(g.copy, g.b_shape, g.b_layout), out))

    def run(program):
        for a, b, out in program:
            np.matmul(a, b, out=out)

    with ThreadPoolExecutor(max(1, len(programs))) as pool:
        def run_all():
            list(pool.map(run, programs.values()))   # waits for every copy
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
