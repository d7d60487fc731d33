"""What one process of 2 threads pays that 2 processes of 1 thread do not.

The same work -- one copy of a preset's model, forward and backward on 64 images (half the
global batch of 128) -- timed three ways on a 2-core machine:

    alone      one thread, the other core idle
    processes  two processes at once, one copy each (as 2 ranks x 1 thread)
    threads    two threads of one process at once, one copy each (core/replicas.py, 1 x 2)

processes / alone is what sharing the machine costs (memory bandwidth, the shared L3);
threads / processes is what sharing one Python interpreter costs: every numpy call takes the
GIL back from the other thread.  Also timed: a tiny numpy call (np.maximum on 4 numbers) and a
64 x 784 x 512 matmul, alone and on two threads at once.

    python launch/docs/bench/one-process-tax.py best cnn mlp
"""
import multiprocessing as mp
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from core.keyed_random import keyed_noise  # noqa: E402
from core.losses import softmax_cross_entropy  # noqa: E402
from core.model import Model  # noqa: E402
from core.parallel import run_workers, use_cores  # noqa: E402

ROWS, REPEATS = 64, 7


def copy_of(preset):
    spec = tomllib.loads((ROOT / "launch" / "configs" / f"{preset}.toml").read_text())
    model = Model(spec["model"]["layers"], seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, ROWS)
    noise = keyed_noise(0, 0, np.arange(ROWS))

    def step():
        out = model.forward(x, True, noise)
        model.backward(softmax_cross_entropy(out, labels, 128)[1])
    return step


def seconds_per_step(step, steps):
    step()                                                  # warm-up: buffers
    best = np.inf
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - t) / steps)
    return best


def in_process(preset, steps, start, out):
    use_cores(1)
    step = copy_of(preset)
    step()
    start.wait()                                            # both processes start together
    out.put(seconds_per_step(step, steps))


def main(presets):
    use_cores(2)
    for preset in presets:
        steps = {"mlp": 200, "cnn": 20}.get(preset, 6)
        one = copy_of(preset)
        with use_cores(1):
            alone = seconds_per_step(one, steps)
        start, out = mp.Barrier(2), mp.Queue()
        procs = [mp.Process(target=in_process, args=(preset, steps, start, out)) for _ in range(2)]
        for p in procs:
            p.start()
        processes = max(out.get() for _ in procs)
        for p in procs:
            p.join()
        copies = [one, copy_of(preset)]
        times = [0.0, 0.0]

        def worker(w):
            times[w] = seconds_per_step(copies[w], steps)
        run_workers(worker, 2)
        threads = max(times)
        print(f"{preset:5} one copy, 64 images: alone {alone * 1e3:7.2f} ms | 2 processes "
              f"{processes * 1e3:7.2f} ms ({processes / alone:.2f}x) | 2 threads "
              f"{threads * 1e3:7.2f} ms ({threads / alone:.2f}x, {threads / processes:.2f}x "
              f"the processes)", flush=True)
    a, b = np.random.rand(64, 784).astype(np.float32), np.random.rand(784, 512).astype(np.float32)
    small = np.zeros(4, np.float32)
    for name, call, n in (("np.maximum on 4 numbers", lambda: np.maximum(small, 0, out=small), 20000),
                          ("matmul 64x784 @ 784x512", lambda: np.matmul(a, b), 200)):
        def loop(w):
            for _ in range(n):
                call()
        with use_cores(1):
            t = time.perf_counter()
            loop(0)
            alone = (time.perf_counter() - t) / n
        t = time.perf_counter()
        run_workers(loop, 2)
        both = (time.perf_counter() - t) / n
        print(f"{name}: alone {alone * 1e6:8.2f} us a call | 2 threads, each as many calls: "
              f"{both * 1e6:8.2f} us ({both / alone:.2f}x)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["best", "cnn", "mlp"])
