"""Layers, part 3: BatchNorm (Ioffe & Szegedy 2015), synchronized across ranks.

Normalizes each feature of (B, F) input, or each channel of (B, H, W, C) input over all
B*H*W positions:  y = gamma * (x - mean) / sqrt(var + eps) + beta.

Data-parallel training splits a global batch over ranks, but the statistics must be those
of the *global* batch or a 4-rank run would differ from a 1-rank run.  So every batch sum
goes through `self.reduce` (sum over ranks; the identity in one process, set by the Model
from `model.reduce`).  Forward uses two reduces (two-pass variance, numerically stable):

    [sum_x (C), count (1)]  -> global mean          (one call, one concatenated vector)
    [sum (x - mean)^2 (C)]  -> global biased var

and backward one:  [sum dy (C), sum dy*xhat (C)].  With m = global count, the gradient is

    dx = gamma / sqrt(var + eps) * (dy - sum_g(dy)/m - xhat * sum_g(dy*xhat)/m)

while dgamma = sum(dy*xhat) and dbeta = sum(dy) are written as the LOCAL sums: the model's
grad vector is summed over ranks by the training loop's allreduce like every other grad.
A rank with zero local samples still takes part in every reduce (and so does not hang).

Running stats (eval mode) follow the global batch: r = (1 - momentum) r + momentum * stat,
with the unbiased variance (m / (m - 1)), as in PyTorch.
Tested by tests/test_core_batchnorm_reduce.py and tests/test_core_gradcheck.py.
"""
import numpy as np

from core.layers import Layer


def identity_reduce(a):
    """The single-process `reduce`: a sum over one rank is the value itself."""
    return a


class BatchNorm(Layer):
    type_name = "batchnorm"
    KEYS = {"momentum": (float, 0.1, "fraction"), "eps": (float, 1e-5, "positive")}

    def __init__(self, index, input_shape, momentum, eps):
        super().__init__(index, input_shape)
        if len(self.input_shape) not in (1, 3):
            self.fail(f"input has shape {self.input_shape}, expected (F,) or (H, W, C)")
        c = self.input_shape[-1]
        self.momentum, self.eps = momentum, eps
        self.param_shapes = {"gamma": (c,), "beta": (c,)}
        self.state_shapes = {"running_mean": (c,), "running_var": (c,)}
        self.reduce = identity_reduce

    def flops(self, input_shape):
        return 2 * int(np.prod(input_shape))   # scale and shift (normalization folded in)

    def forward(self, x, train):
        c = x.shape[-1]
        dt = x.dtype.type
        if not train:
            # Fold running stats into one scale and shift per channel.
            scale = self.gamma / np.sqrt(self.running_var + dt(self.eps))   # (C,)
            shift = self.beta - self.running_mean * scale
            return x * scale + shift              # broadcasts over the last axis
        xs = x.reshape(-1, c)                     # (N, C), N = local B or B*H*W
        # Reduce 1: per-channel sums and the sample count, in one vector.
        # The sums run over N = B*H*W numbers per channel; float64 accumulators keep their
        # rounding (~1e-16) far below float32's, so a batch split over 4 ranks gets the same
        # float32 statistics as the whole batch in one process (world-size invariance).
        vec = np.empty(c + 1, np.float64)
        np.sum(xs, axis=0, dtype=np.float64, out=vec[:c])
        vec[c] = xs.shape[0]
        tot = np.asarray(self.reduce(vec), np.float64)
        m = tot[c]                                # global count
        if m == 0:                                # no sample on any rank: nothing to do
            self.xhat = None
            return x.copy()
        mean = (tot[:c] / m).astype(x.dtype)      # (C,)
        xc = xs - mean                            # (N, C)
        # Reduce 2: centered sums of squares (two-pass variance).
        sq = np.asarray(self.reduce(np.sum(xc * xc, axis=0, dtype=np.float64)), np.float64)
        var = (sq / m).astype(x.dtype)            # (C,) biased
        inv = dt(1) / np.sqrt(var + dt(self.eps))        # (C,)
        xhat = xc                                 # (N, C): normalize xc in place
        xhat *= inv
        y = xhat * self.gamma
        y += self.beta
        mom = dt(self.momentum)
        self.running_mean *= dt(1) - mom
        self.running_mean += mom * mean
        self.running_var *= dt(1) - mom
        self.running_var += mom * (var * (m / (m - 1)) if m > 1 else var)
        self.xhat, self.inv, self.m = xhat, inv, m
        return y.reshape(x.shape)

    def backward(self, dy):
        if self.xhat is None:                     # empty global batch
            self.dgamma[...] = 0
            self.dbeta[...] = 0
            return dy.copy()
        c = dy.shape[-1]
        dys = dy.reshape(-1, c)                   # (N, C)
        local = np.empty(2 * c, np.float64)      # float64 sums, as in forward
        np.sum(dys, axis=0, dtype=np.float64, out=local[:c])
        np.sum(dys * self.xhat, axis=0, dtype=np.float64, out=local[c:])
        self.dbeta[...] = local[:c]               # local sums: the allreduce adds the rest
        self.dgamma[...] = local[c:]
        tot = np.asarray(self.reduce(local.copy()), np.float64)  # copy: a reduce may work in place
        m = self.m
        dx = dys - (tot[:c] / m).astype(dy.dtype)
        dx -= self.xhat * (tot[c:] / m).astype(dy.dtype)
        dx *= self.gamma * self.inv
        return dx.reshape(dy.shape)
