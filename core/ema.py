"""An exponential moving average of the weights (and of the batch-norm statistics).

SGD's last iterate wanders around the minimum it is settling into, by a step of the size of
the learning rate. An average of the recent iterates sits closer to the middle of that
wandering (Polyak & Juditsky 1992; with forgetting, as in Tensorflow's and timm's model EMA),
and often generalizes better than any single iterate. After optimizer step t (t = 0, 1, ...):

    d_t       = min(decay, (1 + t) / (10 + t))          # the usual warm-up of the decay
    ema_{t+1} = d_t * ema_t + (1 - d_t) * theta_{t+1}   # computed as ema += (1 - d)(theta - ema)

with ema_0 = theta_0, the initial weights. Without the warm-up, the first few thousand steps'
average would be dominated by the random initial weights (decay 0.999 remembers them with
weight 0.999^t); with it the average forgets them within a few steps, and reaches the full
decay after about 10 / (1 - decay) steps. t is the global step, so a resumed run continues
the same sequence of d_t, and the average is part of what a checkpoint saves (dist/checkpoint.py).

Batch norm. The averaged weights need running statistics of their own: the raw model's belong
to the raw weights. Two ways: (a) average the running mean and variance with the same d_t, or
(b) after averaging, recompute them by running the averaged model over training batches (as
SWA does, Izmailov et al. 2018). (a) is used here: the running statistics are themselves an
average of the recent batches' statistics, and averaging them with the weights' decay gives
the statistics of the same stretch of training the averaged weights come from. The two differ
by how far the activations' mean and variance move within that stretch; at the end of a
cosine schedule, where the average is used, the weights move little (tests/test_core_ema.py
measures (a) against (b) on a small trained network). (b) would need a pass over training
data outside the training loop at every evaluation, world-size invariant batches for it, and
a data path on rank 0 that the loop does not have; (a) costs one pass over a few hundred
numbers per step.

Sharded updates: the average is elementwise, so a rank can average only its own slice of
theta (``lo``, ``hi``), right after updating that slice, and the result is bitwise that of a
single process. Collect the slices before evaluating or writing a checkpoint.

    ema = EMA(model.theta, model.state, decay=0.999)
    opt.step(model.theta, model.grad, lr); ema.update(model.theta, model.state, global_step)
    ema.theta, ema.state        # the averaged model's parameters and batch-norm statistics
Tested by tests/test_core_ema.py.
"""
import numbers

import numpy as np


def ema_decay_at(decay: float, step: int) -> float:
    """The decay used after optimizer step `step` (0-based): min(decay, (1 + t) / (10 + t))."""
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    def __init__(self, theta, state, decay):
        if not (isinstance(decay, numbers.Real) and not isinstance(decay, bool) and 0 < decay < 1):
            raise ValueError(f"EMA: decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.theta = np.array(theta, copy=True)            # (P,) the averaged parameters
        self.state = np.array(state, copy=True)            # (S,) their batch-norm statistics
        self._scratch = np.empty_like(self.theta)

    def update(self, theta, state, step, lo=0, hi=None):
        """Fold the weights after optimizer step `step` into the average: theta[lo:hi] only (a
        rank's slice of a sharded update), and all of the batch-norm state (the same on every
        rank)."""
        hi = self.theta.size if hi is None else hi
        keep = 1.0 - ema_decay_at(self.decay, step)
        self._average(self.theta[lo:hi], theta[lo:hi], self._scratch[lo:hi], keep)
        self._average(self.state, state, np.empty_like(self.state), keep)

    @staticmethod
    def _average(ema, value, scratch, keep):
        """ema += keep * (value - ema), in place, in the arrays' own precision."""
        np.subtract(value, ema, out=scratch)
        scratch *= ema.dtype.type(keep)
        ema += scratch

    def load(self, theta, state):
        """Restore a saved average (resume)."""
        self.theta[...] = theta
        self.state[...] = state
