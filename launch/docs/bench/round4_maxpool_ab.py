"""Round 4 A/B: MaxPool2D backward, the tiled path against the offset loop, in alternation in
one process (the same moments of a shared machine for both), at the pool shapes of the presets.

    python launch/docs/bench/round4_maxpool_ab.py      (from the repository root)
"""
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from core.conv import MaxPool2D  # noqa: E402

SHAPES = {"cnn pool 1": (128, 28, 28, 32), "cnn pool 2": (128, 14, 14, 64),
          "best-pool pool 1": (128, 24, 24, 32), "best-pool pool 2": (128, 8, 8, 64)}

rng = np.random.default_rng(0)
with threadpool_limits(1):
    for name, shape in SHAPES.items():
        x = rng.standard_normal(shape, dtype=np.float32)
        layer = MaxPool2D(0, shape[1:], 2, 2)
        y = layer.forward(x, True)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        assert np.array_equal(layer._backward_tiles(dy), layer._backward_offsets(dy))
        best = {"offsets": np.inf, "tiles": np.inf}
        for _ in range(10):
            for way in best:
                run = getattr(layer, "_backward_" + way)
                t = time.perf_counter()
                for _ in range(5):
                    run(dy)
                best[way] = min(best[way], (time.perf_counter() - t) / 5)
        print(f"{name:<17} {str(shape):<20} backward: offset loop {1e3 * best['offsets']:6.2f} ms,"
              f" tiles {1e3 * best['tiles']:6.2f} ms ({best['offsets'] / best['tiles']:.2f}x)")

# The whole forward + backward of the cnn preset's model, pools switched between the two ways.
from core.losses import LOSSES  # noqa: E402
from dist.config import load_config  # noqa: E402
from core.keyed_random import keyed_noise  # noqa: E402
from core.model import Model  # noqa: E402

cfg = load_config("cnn")
model = Model(cfg.model.layers, seed=0)
pools = [layer for layer in model.layers if isinstance(layer, MaxPool2D)]
x = rng.random((128, 28, 28, 1), dtype=np.float32)
labels = np.arange(128) % 10
best = {False: np.inf, True: np.inf}
with threadpool_limits(1):
    for round_ in range(20):
        for tiles in ((False, True) if round_ % 2 else (True, False)):   # either goes first
            for pool in pools:
                pool.tiles = tiles
            t = time.perf_counter()
            for _ in range(3):
                out = model.forward(x, train=True, noise=keyed_noise(0, 0, np.arange(128)))
                model.backward(LOSSES["xent"](out, labels, divisor=128)[1])
            best[tiles] = min(best[tiles], (time.perf_counter() - t) / 3)
print(f"cnn forward + backward, 1 thread: offset loop {1e3 * best[False]:.1f} ms, "
      f"tiles {1e3 * best[True]:.1f} ms ({best[False] / best[True]:.2f}x)")
