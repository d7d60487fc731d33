"""Layers, part 2: Conv2D and MaxPool2D on NHWC images, without a loop over pixels.

Convolution as one matrix product (im2col).  Every output pixel (b, i, j) sees a window
x[b, i*s : i*s+kh, j*s : j*s+kw, :] of the zero-padded input.  Lay those windows out as the
rows of a matrix and the convolution is a GEMM:

    cols (B*Ho*Wo, kh*kw*Cin)  @  W (kh*kw*Cin, Cout)  ->  y (B*Ho*Wo, Cout) = (B, Ho, Wo, Cout)

`as_strided` gives the windows as a *view* (B, Ho, Wo, kh, kw, Cin) of the padded input --
no data moves until one `copyto` packs them into the reused `cols` buffer.  NHWC means Cin
is the fastest axis, so the packed rows are runs of contiguous channels, and the output of
the GEMM is already NHWC.  Backward is two more GEMMs:

    dW    = cols^T @ dy        (kh*kw*Cin, B*Ho*Wo) @ (B*Ho*Wo, Cout)
    dx    = a convolution of the padded dy with the flipped kernel (im2col + GEMM); for
            stride s, one such stride-1 convolution per phase (input rows and columns
            mod s) with the kernel taps that reach that phase (Conv2D._dx_by_phases)
    dx    = col2im(dy @ W^T) instead, for stride 1 where the padding around dy would be
            a large part of the work (a 'valid' 5x5 convolution; Conv2D._dx_by_col2im)

One input channel (the first layer, which sees the image) gets its own layout: cols
transposed, (kh*kw + 1, B*Ho*Wo), with a row of ones that carries the bias through the GEMM
(Conv2D._im2col_one_channel says why).

Tested by tests/test_core_gradcheck.py (strides 1 and 2, pads 0 and 1, 1 to 4 channels).
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from core.layers import Layer, REQUIRED, column_sum, per_channel, sample_chunks


# dx by col2im (Conv2D._dx_by_col2im) when the correlation of the padded dy would do at
# least this many times its multiply-adds (H*W / (Ho*Wo)); measured: launch/docs/benchmarks.md.
COL2IM_WASTE = 1.3


def _windows(x, kh, kw, stride, ho, wo):
    """View (B, Ho, Wo, kh, kw, C) of the windows of x (B, H, W, C); no copy."""
    sb, sh, sw, sc = x.strides
    return as_strided(x, shape=(x.shape[0], ho, wo, kh, kw, x.shape[3]),
                      strides=(sb, sh * stride, sw * stride, sh, sw, sc), writeable=False)


def _image_input(layer):
    """Check that the layer gets (H, W, C) images; return H, W, C."""
    if len(layer.input_shape) != 3:
        layer.fail(f"input has shape {layer.input_shape}, expected images (H, W, C); "
                   "put image layers before flatten")
    return layer.input_shape


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in every framework), NHWC, W (kh, kw, Cin, Cout).

    The batch goes through in chunks of a few samples: im2col of one chunk, its GEMM, next
    chunk.  A chunk's cols (about 1 MB, `sample_chunks`) stay in the CPU cache between the
    copy that writes them and the GEMM that reads them; the im2col matrix of a whole batch
    (29 MB for the cnn preset's second conv) would go out to memory and back, and a GEMM with
    only Cout = 32..64 columns is limited by that traffic (launch/docs/benchmarks.md).
    Backward redoes the chunk's im2col from the padded input instead of keeping the big
    matrix: copying from cache is cheaper than reading it back from memory, and a step's
    memory stays at the size of the activations."""
    type_name = "conv"
    KEYS = {"out": (int, REQUIRED, "positive"), "kernel": (int, REQUIRED, "positive"),
            "stride": (int, 1, "positive"), "pad": (int, 0, "nonnegative")}
    decay = ("W",)

    def __init__(self, index, input_shape, out, kernel, stride, pad):
        super().__init__(index, input_shape)
        h, w, c = _image_input(self)
        self.out, self.k, self.s, self.p = out, kernel, stride, pad
        self.ho = (h + 2 * pad - kernel) // stride + 1
        self.wo = (w + 2 * pad - kernel) // stride + 1
        if h + 2 * pad < kernel or w + 2 * pad < kernel:
            self.fail(f"'kernel' {kernel} does not fit the {h}x{w} input with 'pad' {pad} "
                      f"(output size would be <= 0)")
        self.param_shapes = {"W": (kernel, kernel, c, out), "b": (out,)}
        # dx by col2im where the padded correlation would multiply many zeros (see below).
        self.col2im = stride == 1 and h * w >= COL2IM_WASTE * self.ho * self.wo

    def output_shape(self, input_shape):
        return (self.ho, self.wo, self.out)

    def flops(self, input_shape):
        k2c = self.k * self.k * self.input_shape[2]
        return self.ho * self.wo * self.out * (2 * k2c + 1)     # GEMM + bias

    def fans(self):
        k2 = self.k * self.k
        return k2 * self.input_shape[2], k2 * self.out

    def _pad(self, x, name):
        """Zero-padded copy (B, H+2p, W+2p, C) in a reused buffer; the border stays 0."""
        if self.p == 0:
            return x
        b, h, w, c = x.shape
        p = self.p
        xp = self._buffer(name, (b, h + 2 * p, w + 2 * p, c), x.dtype, zero=True)
        xp[:, p:p + h, p:p + w, :] = x
        return xp

    def _im2col(self, windows, i, j, chunk, name):
        """cols (n*ho*wo, kh*kw*C) of samples i:j, from the windows view (B, ho, wo, kh, kw, C)
        of the whole padded input, in a reused buffer of `chunk` samples."""
        _, ho, wo, kh, kw, c = windows.shape
        cols = self._buffer(name, (chunk, ho, wo, kh, kw, c), windows.dtype)[:j - i]
        np.copyto(cols, windows[i:j])                              # the only copy
        return cols.reshape((j - i) * ho * wo, kh * kw * c)

    def _im2col_one_channel(self, xp, name):
        """Cin = 1 (the first layer sees the image): cols transposed, with a row of ones,
        (kh*kw + 1, B*Ho*Wo).  With one channel the rows of the usual cols are runs of only
        kw numbers, and the copy that packs them crawls; transposed, offset (i, j) of every
        window is one strided slice of the image, copied in one go, and the GEMMs read the
        matrix transposed at no cost.  The row of ones is the bias as
        an input that is always 1: the GEMM then adds b (a pass over the whole output saved)
        and backward's GEMM yields db with dW.  Kept for backward: 10 numbers per pixel."""
        k, s, ho, wo = self.k, self.s, self.ho, self.wo
        cols_t = self._buffer(name, (k * k + 1, len(xp), ho, wo), xp.dtype)
        for o in range(k * k):
            i, j = divmod(o, k)
            cols_t[o] = xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, 0]
        cols_t[k * k] = 1
        return cols_t.reshape(k * k + 1, -1)

    def forward(self, x, train):                                   # x (B, H, W, Cin)
        b, c = len(x), x.shape[3]
        kdim, hw = self.k * self.k * c, self.ho * self.wo
        xp = self._pad(x, "xp" if train else "xp_eval")             # eval keeps train's xp
        if train:
            self.xp, self.x_shape = xp, x.shape                     # backward redoes im2col
        y = (self._buffer("y", (b * hw, self.out), x.dtype) if train   # (B*Ho*Wo, Cout) = NHWC
             else np.empty((b * hw, self.out), x.dtype))
        W2 = self.W.reshape(kdim, self.out)
        if c == 1:                                                 # the image itself
            cols_t = self._im2col_one_channel(xp, "cols_t" if train else "cols_t_eval")
            w_b = self._buffer("w_b", (kdim + 1, self.out), x.dtype)
            w_b[:kdim], w_b[kdim] = W2, self.b                     # [W; b] (kh*kw + 1, Cout)
            np.matmul(cols_t.T, w_b, out=y)          # (B*Ho*Wo, kh*kw + 1) @ [W; b]: y = cols W + b
            return y.reshape(b, self.ho, self.wo, self.out)
        chunks = sample_chunks(b, hw * kdim)
        bias = per_channel(self.b, hw)                             # (Ho*Wo*Cout,)
        windows = _windows(xp, self.k, self.k, self.s, self.ho, self.wo)   # a view, no copy
        for i, j in chunks:                                        # samples i:j
            cols = self._im2col(windows, i, j, chunks[0][1], "cols")
            yc = y[i * hw:j * hw]                                  # contiguous rows
            np.matmul(cols, W2, out=yc)                            # (n*Ho*Wo, Cout): the GEMM
            yc.reshape(j - i, -1)[...] += bias                     # while it is in cache
        return y.reshape(b, self.ho, self.wo, self.out)

    def backward(self, dy):                                        # dy (B, Ho, Wo, Cout)
        b, h, w, c = self.x_shape
        k, s, ho, wo = self.k, self.s, self.ho, self.wo
        kdim, hw = k * k * c, ho * wo
        dy2 = dy.reshape(b * hw, self.out)                         # (N, Cout)
        dW = self.dW.reshape(kdim, self.out)
        if c == 1:                                                 # forward's cols, kept
            cols_t = self._buffer("cols_t", (kdim + 1, b, ho, wo), dy.dtype).reshape(kdim + 1, -1)
            dw_db = cols_t @ dy2                                   # (K + 1, N) @ (N, Cout)
            dW[...], self.db[...] = dw_db[:kdim], dw_db[kdim]      # [dW; db]
        else:
            chunks = sample_chunks(b, hw * kdim)
            windows = _windows(self.xp, k, k, s, ho, wo)
            for i, j in chunks:                                    # dW = sum over chunks of
                cols = self._im2col(windows, i, j, chunks[0][1], "cols")   # cols^T dy, with
                part = cols.T @ dy2[i * hw:j * hw]                 # the chunk's im2col again:
                if i == 0:                                         # (K, n*Ho*Wo) @ (n*Ho*Wo, Cout)
                    dW[...] = part
                else:
                    dW += part
            column_sum(dy2, out=self.db)                           # (Cout,)
        if not self.need_dx:
            return None
        return self._dx_by_col2im(dy) if self.col2im else self._dx_by_phases(dy)

    def _dx_by_col2im(self, dy):
        """dL/dx for stride 1 as the transpose of forward's im2col + GEMM:

            dcols = dy @ W^T      (n*Ho*Wo, Cout) @ (Cout, kh*kw*Cin), a chunk's samples
            dxp[b, u + i, v + j, :] += dcols[b, u, v, i, j, :]    for every offset (i, j)

        and dx is the padded dxp without its border.  It multiplies each (kernel offset,
        output pixel) pair once, as forward does; the correlation of the padded dy
        (_dx_by_phases) also multiplies the zeros around dy, H*W / (Ho*Wo) times the work:
        2.25x for a 5x5 'valid' convolution of 12x12 inputs.  The price is the scatter: k*k
        strided adds per chunk, whose inner loop runs over only Cin numbers; so col2im is
        used where that waste is large (COL2IM_WASTE, measured: launch/docs/benchmarks.md)."""
        b, h, w, c = self.x_shape
        k, p, ho, wo = self.k, self.p, self.ho, self.wo
        kdim, hw = k * k * c, ho * wo
        dy2 = dy.reshape(b * hw, self.out)
        Wt = self.W.reshape(kdim, self.out).T                      # (Cout, K), a view
        dxp = self._buffer("dxp", (b, h + 2 * p, w + 2 * p, c), dy.dtype)
        dxp[...] = 0                                               # the scatter adds into it
        chunks = sample_chunks(b, hw * kdim)
        dcols_buffer = self._buffer("dcols", (chunks[0][1] * hw, kdim), dy.dtype)
        for i, j in chunks:
            dcols = dcols_buffer[:(j - i) * hw]
            np.matmul(dy2[i * hw:j * hw], Wt, out=dcols)           # (n*Ho*Wo, K)
            dcols = dcols.reshape(j - i, ho, wo, k, k, c)
            part = dxp[i:j]
            for u in range(k):
                for v in range(k):
                    part[:, u:u + ho, v:v + wo, :] += dcols[:, :, :, u, v, :]
        if p == 0:
            return dxp
        dx = self._buffer("dx", self.x_shape, dy.dtype)
        dx[...] = dxp[:, p:p + h, p:p + w, :]                      # contiguous, for the layer below
        return dx

    def _phase_taps(self, a, pad):
        """The kernel offsets i that reach input rows a, a+s, a+2s, ... (phase a), sorted so
        that tap t reads dy row u + first + t for input row a + s*u; returns (i's, first)."""
        s = self.s
        taps = [i for i in range(self.k - 1, -1, -1) if (a + pad - i) % s == 0]
        return taps, ((a + pad - taps[0]) // s if taps else 0)

    def _dx_by_phases(self, dy):
        """dL/dx as s*s stride-1 convolutions of dy, one per phase of the input.

        Input row r = s*u + a (phase a = r mod s) is reached by output row o through kernel
        row i exactly when s*o + i - p = r, i.e. for the taps i = a + p (mod s), each from
        o = u + (a + p - i)/s.  So the rows of phase a of dx are a stride-1 correlation of
        dy with the sub-kernel of those taps (flipped: o grows as i shrinks), and likewise
        for columns:
            dx[b, s*u + a, s*v + c, :] = sum_{t,w} dy[b, u + f_a + t, v + f_c + w, :] Wsub_ac[t, w]^T
        (dy read as 0 outside the image), Wsub_ac = W[taps_a][:, taps_c], (T_a, T_c, Cin, Cout).
        Each phase is a chunked im2col + GEMM writing its rows of dx; no window overlaps, so
        nothing is added back (a col2im scatter of k*k strided adds whose inner loop runs over
        only Cin numbers is slower, except where the padding below dominates).  For s = 1 it
        is the single phase: dx is the correlation of dy, zero-padded by k-1-p, with the
        flipped kernel, H*W / (Ho*Wo) times the multiply-adds of forward's GEMM, since it also
        multiplies those zeros; where that ratio is large, _dx_by_col2im is used instead."""
        b, h, w, c = self.x_shape
        s, p, ho, wo = self.s, self.p, self.ho, self.wo
        rows = [(a,) + self._phase_taps(a, p) for a in range(min(s, h))]
        cols = [(a,) + self._phase_taps(a, p) for a in range(min(s, w))]
        # One zero-padded copy of dy serves every phase: enough rows before and after it
        # for the reach of every phase's taps.
        def reach(phases, size, out_size):
            before = max([-first for _, taps, first in phases if taps] + [0])
            after = max([(size - a + s - 1) // s - 1 + first + len(taps) - out_size
                         for a, taps, first in phases if taps] + [0])
            return before, after
        (top, bottom), (left, right) = reach(rows, h, ho), reach(cols, w, wo)
        dyp = self._buffer("dyp", (b, top + ho + bottom, left + wo + right, self.out), dy.dtype,
                           zero=True)
        dyp[:, top:top + ho, left:left + wo, :] = dy               # the border stays 0
        dx = self._buffer("dx", self.x_shape, dy.dtype)            # reused: the layers below
        if not all(taps for _, taps, _ in rows + cols):            # may write into it, so
            dx[...] = 0                                            # zero it on every call
        for a, row_taps, f_row in rows:
            for c0, col_taps, f_col in cols:
                if not (row_taps and col_taps):
                    continue                                       # no tap reaches: dx stays 0
                hu, wu = len(range(a, h, s)), len(range(c0, w, s))  # this phase's rows, columns
                th, tw = len(row_taps), len(col_taps)
                # (T_a, T_c, Cin, Cout) -> (T_a*T_c*Cout, Cin): in/out channels swapped
                wsub = self.W[row_taps][:, col_taps].transpose(0, 1, 3, 2).reshape(-1, c)
                src = dyp[:, top + f_row:, left + f_col:, :]       # window (u, v) starts at (u, v)
                phase = dx[:, a::s, c0::s, :]                      # (B, hu, wu, Cin) view
                chunks = sample_chunks(b, hu * wu * th * tw * self.out)
                shape = f"{th}x{tw}:{hu}x{wu}"                      # buffers per phase shape
                windows = _windows(src, th, tw, 1, hu, wu)
                for i, j in chunks:
                    dcols = self._im2col(windows, i, j, chunks[0][1], f"dcols{shape}")
                    if s == 1:                                     # the phase is all of dx
                        np.matmul(dcols, wsub, out=dx[i:j].reshape(-1, c))
                    else:                                          # (n*hu*wu, Cin)
                        phase[i:j] = (dcols @ wsub).reshape(j - i, hu, wu, c)
        return dx


class MaxPool2D(Layer):
    """Max over kernel x kernel windows with a stride (default: the kernel, no overlap).
    The gradient goes to the first maximum of each window (in row-major window order).

    Vectorized as a loop over the k*k window offsets: offset (i, j) of every window at
    once is the strided slice x[:, i::s, j::s, :] (cut to Ho x Wo), so each pass is one
    elementwise op on a (B, Ho, Wo, C) array -- cheaper than packing the windows.  When the
    windows tile the input exactly (stride == kernel, H and W multiples of it: the usual
    2x2), backward views x as (B, Ho, k, Wo, k, C) instead; see _backward_tiles."""
    type_name = "maxpool"
    KEYS = {"kernel": (int, 2, "positive"), "stride": (int, "kernel", "positive")}

    def __init__(self, index, input_shape, kernel, stride):
        super().__init__(index, input_shape)
        h, w, c = _image_input(self)
        if kernel > h or kernel > w:
            self.fail(f"'kernel' {kernel} is larger than the {h}x{w} input")
        self.k, self.s = kernel, stride
        self.ho, self.wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        self.tiles = stride == kernel and h % kernel == 0 and w % kernel == 0

    def output_shape(self, input_shape):
        return (self.ho, self.wo, self.input_shape[2])

    def flops(self, input_shape):
        return self.ho * self.wo * self.input_shape[2] * (self.k * self.k - 1)   # comparisons

    def _offset(self, a, o):
        """Element (i, j) = divmod(o, k) of every window: a (B, Ho, Wo, C) strided view."""
        i, j = divmod(o, self.k)
        s = self.s
        return a[:, i:i + s * (self.ho - 1) + 1:s, j:j + s * (self.wo - 1) + 1:s, :]

    # Both directions go chunk by chunk (`sample_chunks`): the k*k passes over a chunk find
    # it in the cache.
    def forward(self, x, train):                                   # x (B, H, W, C)
        y = np.empty((len(x), self.ho, self.wo, x.shape[3]), x.dtype)   # (B, Ho, Wo, C)
        for i, j in sample_chunks(len(x), np.prod(self.input_shape)):
            np.copyto(y[i:j], self._offset(x[i:j], 0))
            for o in range(1, self.k * self.k):                    # branch-free running max
                np.maximum(y[i:j], self._offset(x[i:j], o), out=y[i:j])
        if train:
            self.x, self.y = x, y                                  # x is the previous output anyway
        return y

    def backward(self, dy):                                        # dy (B, Ho, Wo, C)
        dx = np.empty(self.x.shape, dy.dtype)                      # (B, H, W, C)
        backward = self._backward_tiles if self.tiles else self._backward_offsets
        for i, j in sample_chunks(len(dy), np.prod(self.input_shape)):
            backward(self.x[i:j], self.y[i:j], dy[i:j], dx[i:j])
        return dx

    def _backward_tiles(self, x, y, dy, dx):
        """dx (n, H, W, C) from x, y, dy of n samples, for windows that tile x.
        As (n, Ho, k, Wo, k, C), every window's inputs sit on axes 2 and 4, and y and dy
        broadcast over them.  One comparison marks the maxima and one multiply writes dx: two
        passes over x, against several per window offset in _backward_offsets.  The same
        result, ties included: where a window has several maxima, only its first keeps the
        gradient."""
        k = self.k
        tiles = (len(dy), self.ho, k, self.wo, k, dy.shape[3])
        at_max = np.equal(x.reshape(tiles), y[:, :, None, :, None, :])   # bool
        # Each window has at least one maximum, so more marks than windows means a tie.
        # (Rare in float data, common after a ReLU: windows of zeros.  A NaN window marks
        # nothing; NaNs stop training at the update's finiteness check anyway.)
        if np.count_nonzero(at_max) != y.size:
            taken = np.zeros(y.shape, bool)                        # window already served
            for i in range(k):
                for j in range(k):
                    first = at_max[:, :, i, :, j, :]               # (B, Ho, Wo, C) view
                    np.greater(first, taken, out=first)            # first & ~taken
                    taken |= first
        np.multiply(at_max, dy[:, :, None, :, None, :], out=dx.reshape(tiles))

    def _backward_offsets(self, x, y, dy, dx):
        """dx (n, H, W, C) from x, y, dy of n samples, for any windows.
        Route dy to the first offset whose input equals the max.  Recomputing this mask
        is cheaper than tracking an argmax with masked writes, which branch per element."""
        k2, disjoint = self.k * self.k, self.s >= self.k
        covered = disjoint and self.ho * self.k == x.shape[1] and self.wo * self.k == x.shape[2]
        if not covered:
            dx[...] = 0                                            # (n, H, W, C)
        taken = np.zeros(y.shape, bool)                            # window already served
        first = np.empty(y.shape, bool)
        for o in range(k2):
            np.equal(self._offset(x, o), y, out=first)
            np.greater(first, taken, out=first)                    # first & ~taken
            if o < k2 - 1:
                taken |= first
            dxo = self._offset(dx, o)
            if disjoint:                                           # each input in one window
                np.multiply(dy, first, out=dxo)
            else:                                                  # overlapping: accumulate
                dxo += dy * first
