"""What ``python -m dist.train --debug`` adds when something is wrong.

* At the first step, rank 0 checks backprop against central differences on a few of its
  samples (``core.gradcheck.check_model_at``: a float64 copy of the real model at a real batch)
  and prints the relative error; above ``GRADCHECK_LIMIT`` the run stops with one line.
* Every forward pass checks each layer's output for NaN/inf and names the first bad layer,
  instead of a NaN loss several layers later.
* ``dist.train`` also shortens the run (20 steps per epoch, at most 2 epochs).

Try it:  python -m dist.train --preset cnn --debug
"""
from __future__ import annotations

import numpy as np

from core.gradcheck import check_model_at
from core.model import Model
from dist.collective import agree
from dist.comm import Comm
from dist.errors import ExpectedError

GRADCHECK_SAMPLES = 4
GRADCHECK_LIMIT = 1e-4  # float64 central differences on a correct backward give ~1e-7


def debug_first_step(comm: Comm, model: Model, x, y, loss: str, divisor: int, noise) -> None:
    """Gradient check on rank 0 (others wait); every rank stops together if it fails."""
    error = None
    if comm.is_root:
        n = min(GRADCHECK_SAMPLES, len(y))
        worst = check_model_at(model, x[:n], y[:n], loss, divisor,
                               lambda stream, shape: noise(stream, shape)[:n])
        print(f"--debug: gradient check at step 1 on {n} samples: max relative error "
              f"{worst:.2e} (limit {GRADCHECK_LIMIT:.0e})", flush=True)
        if not worst <= GRADCHECK_LIMIT:
            error = (f"--debug: backprop disagrees with finite differences (max relative error "
                     f"{worst:.2e}); a layer's backward is wrong")
    agree(comm, error is None, error or "")


def forward_checked(model: Model, x: np.ndarray, noise) -> np.ndarray:
    """``model.forward(x, train=True)`` that stops at the first layer producing NaN/inf."""
    def check(layer, out):
        if not np.isfinite(out).all():
            bad = int(np.count_nonzero(~np.isfinite(out)))
            raise ExpectedError(f"--debug: layer {layer.index} ({layer.type_name}) produced "
                                f"{bad} non-finite value(s); input of that layer was finite")
    return model.forward(x, train=True, noise=noise, after_layer=check)
