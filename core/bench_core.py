"""Benchmark of the core alone: training throughput of the CNN preset vs the GEMM peak.

    python -m core.bench_core [--threads 2] [--batch 128] [--steps 10] [--layers]

Prints (not a test): a plain float32 numpy matmul's GFLOP/s (the machine's practical peak
for our GEMMs), then forward+backward images/s and achieved GFLOP/s of the CNN preset
(a training step costs ~3x the forward FLOPs: forward, dW and dx GEMMs).  --layers adds
the time spent in each layer's forward and backward.
"""
import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from core.keyed_random import keyed_noise
from core.losses import softmax_cross_entropy
from core.model import Model

# The layers of launch/configs/cnn.toml (core/ reads no files, so they are repeated here;
# tests/test_core_spec.py checks that the two agree).
CNN = [{"type": "conv", "out": 32, "kernel": 3, "pad": 1}, {"type": "maxpool", "kernel": 2}, {"type": "relu"},
       {"type": "conv", "out": 64, "kernel": 3, "pad": 1}, {"type": "maxpool", "kernel": 2}, {"type": "relu"},
       {"type": "flatten"}, {"type": "dense", "out": 128}, {"type": "relu"}, {"type": "dropout", "p": 0.3},
       {"type": "dense", "out": 10}]


def best_time(fn, repeats):
    fn()                                       # warm-up: buffers, page faults, BLAS threads
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times))


def gemm_gflops(n=2048, repeats=5):
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    best, _ = best_time(lambda: np.matmul(a, b, out=c), repeats)
    return 2 * n ** 3 / best / 1e9


def layer_times(model, x, noise, dout, repeats=3):
    """Best-of-repeats seconds per layer, forward and backward (train mode)."""
    fwd = np.full(len(model.layers), np.inf)
    bwd = np.full(len(model.layers), np.inf)
    for _ in range(repeats):
        h, ins = x, []
        for i, layer in enumerate(model.layers):
            ins.append(h)
            t = time.perf_counter()
            h = layer.forward(h, True, noise) if layer.needs_noise else layer.forward(h, True)
            fwd[i] = min(fwd[i], time.perf_counter() - t)
        d = dout
        for i in reversed(range(len(model.layers))):
            t = time.perf_counter()
            d = model.layers[i].backward(d)
            bwd[i] = min(bwd[i], time.perf_counter() - t)
            if d is None:
                break
    return fwd, bwd


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--layers", action="store_true")
    args = ap.parse_args()

    with threadpool_limits(limits=args.threads, user_api="blas"):
        peak = gemm_gflops()
        print(f"numpy float32 matmul 2048x2048, {args.threads} BLAS threads: {peak:.1f} GFLOP/s")

        model = Model(CNN, seed=0)
        b = args.batch
        rng = np.random.default_rng(0)
        x = rng.random((b, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, 10, b)
        noise = keyed_noise(0, 0, np.arange(b))

        def step():
            out = model.forward(x, True, noise)
            _, dout = softmax_cross_entropy(out, y, b)
            model.backward(dout)

        best, median = best_time(step, args.steps)
        flops = 3 * model.describe()["flops_per_sample"] * b     # forward + 2x backward
        print(f"CNN preset, batch {b}, forward+backward: {b / best:.0f} images/s "
              f"(best of {args.steps}; median {b / median:.0f}), {best * 1e3:.1f} ms/step, "
              f"{flops / best / 1e9:.1f} GFLOP/s = {100 * flops / best / 1e9 / peak:.0f}% of matmul")
        fwd_best, _ = best_time(lambda: model.forward(x, False), args.steps)
        print(f"CNN preset, batch {b}, forward only (eval): {b / fwd_best:.0f} images/s")
        if args.layers:
            out = model.forward(x, True, noise)
            _, dout = softmax_cross_entropy(out, y, b)
            fwd, bwd = layer_times(model, x, noise, dout)
            for layer, f, bk in zip(model.layers, fwd, bwd):
                bk = 0.0 if not np.isfinite(bk) else bk
                print(f"  {layer.index:>2} {layer.type_name:<9} fwd {f * 1e3:7.2f} ms  bwd {bk * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
