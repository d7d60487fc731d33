"""SGD with momentum (heavy-ball or Nesterov), masked weight decay and a per-parameter
learning-rate scale, on flat vectors.

One step, with g the summed-and-divided gradient from the allreduce (PyTorch's convention,
so published hyper-parameters carry over):

    g  = grad + weight_decay * decay_mask * theta    # L2 on weights only, not biases / BN
    v  = momentum * v + g
    theta -= lr * s * v                              # heavy ball (Polyak)
    theta -= lr * s * (g + momentum * v)             # Nesterov (Sutskever et al. 2013 form)

s is `lr_scale`, one factor per parameter (1 everywhere when not given): e.g. batch norm's
gamma and beta trained at a multiple of the base rate, as cifar10-airbench (Jordan 2024) trains
its batch-norm biases.  Without it the step multiplies by nothing more, so it is the plain step
bit for bit.

The learning rate is applied at the update, not folded into v, so changing lr (schedules,
warmup) does not rescale the remembered velocity.  Everything is in place on the model's
arena; the only other memory is `velocity` and one scratch vector, both allocated once
(and the weight-decay and lr-scale vectors, fixed).
`velocity` is what a checkpoint saves: restore it with opt.velocity[...] = saved.

    opt = SGD(model.theta.size, momentum=0.9, weight_decay=5e-4, decay_mask=model.decay_mask)
    opt = SGD(model.theta.size, lr_scale=1 + 3 * model.bn_mask)   # batch norm at 4 x lr
    opt.step(model.theta, model.grad, lr)
    opt.step(model.theta, grad_of_my_slice, lr, lo=start)   # only theta[start:start+len(...)]
Tested by tests/test_core_optim.py.
"""
import math
import numbers

import numpy as np


class SGD:
    BLOCK = 2 ** 18   # elements per block of the update (1 MB per array): see step()

    def __init__(self, size, momentum=0.9, nesterov=False, weight_decay=0.0, decay_mask=None,
                 lr_scale=None, dtype=np.float32):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ValueError(f"SGD: size must be a non-negative int, got {size!r}")
        if not (isinstance(momentum, numbers.Real) and not isinstance(momentum, bool) and 0 <= momentum < 1):
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        if not (isinstance(weight_decay, numbers.Real) and math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"SGD: weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True requires momentum > 0")
        self.size, self.momentum, self.nesterov = int(size), float(momentum), bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.dtype = np.dtype(dtype)
        if decay_mask is None:
            self.decay_mask = np.ones(self.size, self.dtype)       # decay everything
        else:
            self.decay_mask = np.asarray(decay_mask, self.dtype)
            if self.decay_mask.shape != (self.size,):
                raise ValueError(f"SGD: decay_mask must have shape ({self.size},), got {self.decay_mask.shape}")
        self._decay = self.decay_mask * self.dtype.type(self.weight_decay)   # wd * mask, once
        # s, a copy: None means 1 everywhere, and then no pass of the step multiplies by it.
        self.lr_scale = None if lr_scale is None else np.array(lr_scale, self.dtype)
        if self.lr_scale is not None:
            if self.lr_scale.shape != (self.size,):
                raise ValueError(f"SGD: lr_scale must have shape ({self.size},), got {self.lr_scale.shape}")
            if not (np.isfinite(self.lr_scale).all() and (self.lr_scale > 0).all()):
                raise ValueError("SGD: lr_scale must be finite and > 0 everywhere")
        self.velocity = np.zeros(self.size, self.dtype)
        self._scratch = np.empty(self.size, self.dtype)

    def step(self, theta, grad, lr, lo=0):
        """One in-place update of theta (grad is not modified).

        With ``lo``, grad is the gradient of the slice theta[lo : lo + len(grad)] only, and only
        that slice (and its velocity) is updated: each rank's share of a sharded update
        (dist/update.py).  The arithmetic per element is the same either way."""
        hi = lo + (grad.shape[0] if grad.ndim == 1 else -1)
        if theta.shape != (self.size,) or grad.ndim != 1 or not 0 <= lo <= hi <= self.size:
            raise ValueError(f"SGD: theta must have shape ({self.size},) and grad be a slice of "
                             f"it, got {theta.shape} and {grad.shape} at offset {lo}")
        # Block by block: the passes of _update (up to ten) then read and write a block that
        # stays in the caches, instead of streaming the whole arena from memory each time.  Each
        # element's arithmetic is the same in any block, so the result does not depend on it.
        for start in range(lo, hi, self.BLOCK):
            stop = min(start + self.BLOCK, hi)
            self._update(theta[start:stop], grad[start - lo:stop - lo], self.velocity[start:stop],
                         self._scratch[start:stop],
                         self._decay[start:stop] if self.weight_decay else None,
                         None if self.lr_scale is None else self.lr_scale[start:stop], lr)

    def _update(self, theta, grad, v, g, decay, scale, lr):
        dt = self.dtype.type
        mu = dt(self.momentum)
        if decay is not None:
            np.multiply(theta, decay, out=g)                       # g = wd * mask * theta + grad
            g += grad
        else:
            g[...] = grad
        v *= mu                                                    # v = mu v + g
        v += g
        if self.nesterov:                                          # theta -= lr s (g + mu v)
            g *= dt(lr)
            if scale is not None:
                g *= scale
            theta -= g
            np.multiply(v, dt(lr * self.momentum), out=g)
            if scale is not None:
                g *= scale
            theta -= g
        else:                                                      # theta -= lr s v
            np.multiply(v, dt(lr), out=g)
            if scale is not None:
                g *= scale
            theta -= g
