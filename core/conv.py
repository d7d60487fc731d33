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
    dcols = dy @ W^T           then col2im: add each of the kh*kw window slices back into dx
                               (a loop over the kh*kw kernel offsets, never over pixels)

Tested by tests/test_core_gradcheck.py (strides 1 and 2, pads 0 and 1, several channels).
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from core.layers import Layer, REQUIRED


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


class _Buffers:
    """Scratch arrays reused across calls while the shape stays the same (big im2col
    matrices: allocating ~100 MB per step costs page faults, not just malloc)."""

    def _buffer(self, name, shape, dtype, zero=False):
        buf = self.__dict__.get("_buf_" + name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = (np.zeros if zero else np.empty)(shape, dtype)
            self.__dict__["_buf_" + name] = buf
        return buf


class Conv2D(Layer, _Buffers):
    """2-D convolution (cross-correlation, as in every framework), NHWC, W (kh, kw, Cin, Cout)."""
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

    def output_shape(self, input_shape):
        return (self.ho, self.wo, self.out)

    def flops(self, input_shape):
        k2c = self.k * self.k * self.input_shape[2]
        return self.ho * self.wo * self.out * (2 * k2c + 1)     # GEMM + bias

    def fans(self):
        k2 = self.k * self.k
        return k2 * self.input_shape[2], k2 * self.out

    def _pad(self, x):
        """Zero-padded copy (B, H+2p, W+2p, C) in a reused buffer; the border stays 0."""
        if self.p == 0:
            return x
        b, h, w, c = x.shape
        p = self.p
        xp = self._buffer("xp", (b, h + 2 * p, w + 2 * p, c), x.dtype, zero=True)
        xp[:, p:p + h, p:p + w, :] = x
        return xp

    def forward(self, x, train):
        b = len(x)
        k, s, ho, wo = self.k, self.s, self.ho, self.wo
        kdim = k * k * x.shape[3]
        # Training keeps `cols` for backward; eval uses its own buffer so an evaluation
        # between forward and backward cannot corrupt the cache.
        cols = self._buffer("cols" if train else "cols_eval", (b, ho, wo, k, k, x.shape[3]), x.dtype)
        np.copyto(cols, _windows(self._pad(x), k, k, s, ho, wo))  # im2col: the one big copy
        cols2 = cols.reshape(b * ho * wo, kdim)                    # (N, kh*kw*Cin)
        y = cols2 @ self.W.reshape(kdim, self.out)                 # (N, Cout): the GEMM
        y += self.b
        if train:
            self.cols2, self.x_shape = cols2, x.shape
        return y.reshape(b, ho, wo, self.out)                      # (B, Ho, Wo, Cout)

    def backward(self, dy):                                        # dy (B, Ho, Wo, Cout)
        b, h, w, c = self.x_shape
        k, s, p, ho, wo = self.k, self.s, self.p, self.ho, self.wo
        kdim = k * k * c
        dy2 = dy.reshape(b * ho * wo, self.out)                    # (N, Cout)
        np.matmul(self.cols2.T, dy2, out=self.dW.reshape(kdim, self.out))   # (K, Cout)
        np.sum(dy2, axis=0, out=self.db)
        if not self.need_dx:
            return None
        dcols = self._buffer("dcols", (b * ho * wo, kdim), dy.dtype)
        np.matmul(dy2, self.W.reshape(kdim, self.out).T, out=dcols)  # (N, K)
        dcols = dcols.reshape(b, ho, wo, k, k, c)
        # col2im: window offset (i, j) of output pixel (oi, oj) is input pixel
        # (oi*s + i, oj*s + j); windows overlap, so contributions add up.
        dxp = np.zeros((b, h + 2 * p, w + 2 * p, c), dy.dtype)
        for i in range(k):
            for j in range(k):
                dxp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] += dcols[:, :, :, i, j, :]
        return dxp[:, p:p + h, p:p + w, :]                         # (B, H, W, Cin)


class MaxPool2D(Layer):
    """Max over kernel x kernel windows with a stride (default: the kernel, no overlap).
    The gradient goes to the (first) maximum of each window."""
    type_name = "maxpool"
    KEYS = {"kernel": (int, 2, "positive"), "stride": (int, "kernel", "positive")}

    def __init__(self, index, input_shape, kernel, stride):
        super().__init__(index, input_shape)
        h, w, c = _image_input(self)
        if kernel > h or kernel > w:
            self.fail(f"'kernel' {kernel} is larger than the {h}x{w} input")
        self.k, self.s = kernel, stride
        self.ho, self.wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1

    def output_shape(self, input_shape):
        return (self.ho, self.wo, self.input_shape[2])

    def flops(self, input_shape):
        return self.ho * self.wo * self.input_shape[2] * (self.k * self.k - 1)   # comparisons

    def forward(self, x, train):                                   # x (B, H, W, C)
        b, _, _, c = x.shape
        k, ho, wo = self.k, self.ho, self.wo
        win = _windows(x, k, k, self.s, ho, wo).reshape(b, ho, wo, k * k, c)  # copies
        if not train:
            return win.max(axis=3)
        self.arg = win.argmax(axis=3)                              # (B, Ho, Wo, C) in [0, k*k)
        self.x_shape = x.shape
        return np.take_along_axis(win, self.arg[:, :, :, None, :], axis=3)[:, :, :, 0, :]

    def backward(self, dy):                                        # dy (B, Ho, Wo, C)
        k, s, ho, wo = self.k, self.s, self.ho, self.wo
        dx = np.zeros(self.x_shape, dy.dtype)
        zero = dy.dtype.type(0)
        for o in range(k * k):                                     # loop over window offsets
            i, j = divmod(o, k)
            dx[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] += np.where(self.arg == o, dy, zero)
        return dx
