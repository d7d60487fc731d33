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

A ReLU right after the BatchNorm (the usual conv -> batchnorm -> relu) is applied here, in
the pass that writes y, when the Model sets `relu = True` (it then turns that ReLU layer into
a pass-through, see core/model.py): y = max(gamma * xhat + beta, 0), and backward first
zeroes dy where y = 0.  That saves the ReLU's own passes over memory; forward also keeps
only the centred x - mean (xhat = (x - mean) * inv is never written out) and reuses its
arrays from step to step.  Elementwise layers on (128, 26, 26, 32) floats are bound by
memory traffic, so passes, not arithmetic, are what cost here.

Running stats (eval mode) follow the global batch: r = (1 - momentum) r + momentum * stat,
with the unbiased variance (m / (m - 1)), as in PyTorch.
Tested by tests/test_core_batchnorm_reduce.py and tests/test_core_gradcheck.py.
"""
import numpy as np

from core.layers import Layer, per_channel, sample_chunks


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
        self.relu = False                         # True: also applies the ReLU that follows

    def flops(self, input_shape):
        return 2 * int(np.prod(input_shape))   # scale and shift (normalization folded in)

    def _sample_sums(self, a3, out):
        """out (n, C) = float32 per-sample sums of a3 (n, P, C) over its P = H*W positions: a
        batched GEMV with a ones vector (BLAS, fast).  The statistics then add these in
        float64 across samples (`_total`): float64 accumulators keep the rounding far below
        float32's, and a sample's own sum does not depend on which rank holds it, so a batch
        split over 4 ranks gets the same float32 statistics as the whole batch in one
        process (world-size invariance), several times faster than one float64 reduction
        over all B*H*W rows."""
        if a3.shape[1] == 1:
            out[...] = a3[:, 0]
        else:
            np.matmul(self._ones, a3, out=out)

    @staticmethod
    def _sample_dots(a3, b3, out):
        """out (n, C) = float32 per-sample sums of a3 * b3 (n, P, C), as `_sample_sums`.
        einsum multiplies and adds in one pass without writing the product out."""
        np.einsum("npc,npc->nc", a3, b3, out=out)

    @staticmethod
    def _total(per_sample):
        """float64 (C,) sum over samples of per-sample float32 sums (B, C)."""
        return np.sum(per_sample, axis=0, dtype=np.float64)

    def _prepare(self, a):
        """Shapes of a (B, ..., C) for the passes below: B, P, C, the samples as rows
        (B, P*C), as (B, P, C), and the chunks of samples the passes go through."""
        b, c = len(a), a.shape[-1]
        p = int(np.prod(self.input_shape[:-1]))   # positions per sample: H*W, or 1
        ones = getattr(self, "_ones", None)
        if p > 1 and (ones is None or ones.shape != (p,) or ones.dtype != a.dtype):
            self._ones = np.ones(p, a.dtype)
        return b, p, c, a.reshape(b, p * c), a.reshape(b, p, c), sample_chunks(b, p * c)

    # The passes below go chunk by chunk (`sample_chunks`, ~1 MB): the second pass over a
    # chunk (the square after the centring, the shift after the scale) finds it in the cache.
    def forward(self, x, train):
        b, p, c, rows, x3, chunks = self._prepare(x)   # rows (B, P*C), x3 (B, P, C)
        dt = x.dtype.type
        if not train:
            # Fold running stats into one scale and shift per channel.
            scale = self.gamma / np.sqrt(self.running_var + dt(self.eps))   # (C,)
            shift = self.beta - self.running_mean * scale
            return self._scale_shift(rows, rows, scale, shift, p, chunks, np.empty(rows.shape, x.dtype)
                                     ).reshape(x.shape)
        # Reduce 1: per-channel sums and the sample count, in one vector.
        per = self._buffer("per_sample", (2, b, c), x.dtype)      # float32 sums per sample
        self._sample_sums(x3, per[0])
        vec = np.empty(c + 1, np.float64)
        vec[:c] = self._total(per[0])
        vec[c] = b * p
        tot = np.asarray(self.reduce(vec), np.float64)
        m = tot[c]                                # global count
        if m == 0:                                # no sample on any rank: nothing to do
            self.xc = None
            return x.copy()
        mean = (tot[:c] / m).astype(x.dtype)      # (C,)
        xc = self._buffer("xc", rows.shape, x.dtype)             # x - mean, (B, P*C)
        xc3 = xc.reshape(x3.shape)
        mean_rows = per_channel(mean, p)

        for i, j in chunks:                       # centre, and the centred sums of squares
            np.subtract(rows[i:j], mean_rows, out=xc[i:j])
            self._sample_dots(xc3[i:j], xc3[i:j], per[1, i:j])
        # Reduce 2: centered sums of squares (two-pass variance).
        sq = np.asarray(self.reduce(self._total(per[1])), np.float64)
        var = (sq / m).astype(x.dtype)            # (C,) biased
        inv = dt(1) / np.sqrt(var + dt(self.eps))        # (C,)
        # y = gamma * xhat + beta with xhat = xc * inv: one scale per channel, and xhat is
        # never written out (backward works from xc and inv).
        y = self._scale_shift(rows, xc, self.gamma * inv, self.beta, p, chunks,
                              self._buffer("y", rows.shape, x.dtype))
        mom = dt(self.momentum)
        self.running_mean *= dt(1) - mom
        self.running_mean += mom * mean
        self.running_var *= dt(1) - mom
        self.running_var += mom * (var * (m / (m - 1)) if m > 1 else var)
        self.xc, self.inv, self.m, self.y = xc, inv, m, y
        return y.reshape(x.shape)

    def _scale_shift(self, rows, a, scale, shift, p, chunks, out):
        """out = a * scale + shift per channel (rows (B, P*C)), then the ReLU if fused."""
        scale_rows, shift_rows = per_channel(scale, p), per_channel(shift, p)

        for i, j in chunks:
            yc = np.multiply(a[i:j], scale_rows, out=out[i:j])
            yc += shift_rows
            if self.relu:                         # the ReLU after us, while y is at hand
                np.maximum(yc, 0, out=yc)
        return out

    def backward(self, dy):
        if self.xc is None:                       # empty global batch
            self.dgamma[...] = 0
            self.dbeta[...] = 0
            return dy.copy()
        b, p, c, dz, dz3, chunks = self._prepare(dy)   # dL/d(gamma xhat + beta), in place in dy
        xc3 = self.xc.reshape(dz3.shape)
        per = self._buffer("per_sample", (2, b, c), dy.dtype)
        rows_per_chunk = chunks[0][1] - chunks[0][0] if chunks else 0   # chunk arrays
        for i, j in chunks:
            if self.relu:                         # the ReLU's backward: pass where y > 0
                on = self._buffer("on", (rows_per_chunk, p * c), np.bool_)[:j - i]
                np.multiply(dz[i:j], np.greater(self.y[i:j], 0, out=on), out=dz[i:j])
            self._sample_sums(dz3[i:j], per[0, i:j])                     # sum dz
            self._sample_dots(dz3[i:j], xc3[i:j], per[1, i:j])           # sum dz * xc
        local = np.empty(2 * c, np.float64)       # float64 sums, as in forward
        local[:c] = self._total(per[0])
        local[c:] = self._total(per[1]) * self.inv   # sum dz * xhat = inv * sum dz * xc
        self.dbeta[...] = local[:c]               # local sums: the allreduce adds the rest
        self.dgamma[...] = local[c:]
        tot = np.asarray(self.reduce(local.copy()), np.float64)  # copy: a reduce may work in place
        m = self.m
        # dx = gamma * inv * (dz - sum(dz)/m - xhat * sum(dz*xhat)/m), in place in dz, as
        #    = (dz - sum(dz)/m) * scale - xc * (scale * inv * sum(dz*xhat)/m)
        scale = self.gamma * self.inv             # (C,)
        mean_rows = per_channel(tot[:c] / m, p, dy.dtype)
        scale_rows = per_channel(scale, p)
        xc_rows = per_channel(scale * self.inv * (tot[c:] / m), p, dy.dtype)

        prod = self._buffer("prod", (rows_per_chunk, p * c), dy.dtype)
        for i, j in chunks:
            dx = dz[i:j]
            dx -= mean_rows
            dx *= scale_rows
            dx -= np.multiply(self.xc[i:j], xc_rows, out=prod[:j - i])
        return dz.reshape(dy.shape)
