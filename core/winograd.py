"""Winograd's minimal filtering F(2x2, 3x3): a 3x3 stride-1 convolution with 2.25x fewer
multiplications than im2col (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
Networks").  Used by Conv2D (core/conv.py) for its 3x3 stride-1 layers with more than one
input channel.

Why it exists.  At batch 128 the best preset's 3x3 convolutions are GEMM-bound: the matrix
products themselves, not memory traffic, take most of their time, so the only way to make them
faster is to do fewer multiply-adds.  Split the output into 2x2 tiles; each needs a 4x4 tile of
the input (tiles overlap by 2).  In one dimension, two outputs of a 3-tap filter g from four
inputs d take 4 multiplications instead of 6:

    y = A^T [(G g) * (B^T d)]          (* elementwise, 4 numbers)

    B^T = [[1, 0, -1, 0],      G = [[1,    0,   0],       A^T = [[1, 1,  1,  0],
           [0, 1,  1, 0],           [1/2, 1/2, 1/2],              [0, 1, -1, -1]]
           [0, -1, 1, 0],           [1/2, -1/2, 1/2],
           [0, 1,  0, -1]]          [0,    0,   1]]

and nested in two dimensions, Y = A^T [U * V] A with V = B^T d B and U = G g G^T: 16
multiplications per 2x2 output tile instead of 36.  Summed over input channels, the
elementwise product becomes 16 independent matrix products, one per "frequency" (a, b):

    V[ab] (T tiles, Cin)  @  U[ab] (Cin, Cout)  ->  M[ab] (T, Cout),   then  Y = A^T M A.

So a forward pass is three linear maps: the input transform (B^T . B on every 4x4 tile), 16
GEMMs, the output transform (A^T . A).  Backward is the same maps transposed, in reverse:
dM = A dY A^T, then dU = V[ab]^T dM[ab] and dV = dM[ab] U[ab]^T (the GEMMs' own backward),
dW = G^T dU G, and dx = B dV B^T added back into the overlapping input tiles.  It is the exact
gradient of what forward computes, so the gradient check holds as for any layer.

The transforms are written as a few whole-array additions on strided views: B^T along the rows
of every tile at once, for all tiles (4 numpy operations), then along the columns (4 more), and
A^T likewise.  (A first version with einsum over explicit 4x4 tiles was 5x slower than im2col:
the transforms must cost less than the products they save.)

Rounding: the result is not bitwise that of im2col -- G has halves and the transforms add and
subtract inputs before multiplying -- but for float32 the difference stays at a few units of
float32 rounding of the largest terms (tests/test_core_fast_paths.py bounds it at 1e-5
relative to the output's scale).

    python -m core.winograd      # compares with a direct convolution, prints the error
"""
import numpy as np

G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])   # (4, 3)


def weight_transform(W):
    """U = G g G^T for every (Cin, Cout) pair: W (3, 3, Cin, Cout) -> U (16, Cin, Cout)."""
    g = G.astype(W.dtype)
    gw = np.einsum("ai,ijco->ajco", g, W)                        # G g, per column of g
    return np.einsum("ajco,bj->abco", gw, g).reshape((16,) + W.shape[2:])   # (G g) G^T


def weight_transform_backward(dU):
    """dW = G^T dU G: dU (16, Cin, Cout) -> (3, 3, Cin, Cout)."""
    g = G.astype(dU.dtype)
    du_g = np.einsum("abco,bj->ajco", dU.reshape((4, 4) + dU.shape[1:]), g)   # dU G
    return np.einsum("ai,ajco->ijco", g, du_g)                               # G^T (dU G)


def _every_other(a, axis, start, count):
    """a[..., start : start + 2*count : 2, ...] along `axis`: a view."""
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, start + 2 * count, 2)
    return a[tuple(index)]


def _bt_stage(a, axis, t, out):
    """B^T along one axis of all t tiles at once: with a_q = the q-th of every tile's 4
    numbers (a view of a at q, q+2, q+4, ...), out[0..3] = a0 - a2, a1 + a2, a2 - a1, a1 - a3."""
    a0, a1, a2, a3 = (_every_other(a, axis, q, t) for q in range(4))
    np.subtract(a0, a2, out=out[0])
    np.add(a1, a2, out=out[1])
    np.subtract(a2, a1, out=out[2])
    np.subtract(a1, a3, out=out[3])


def _bt_stage_backward(d, axis, t, out, scratch):
    """The transpose of _bt_stage: d[0..3] (gradients of its four outputs) -> out, the
    gradient of a (2t + 2 long along `axis`; overwritten).  Tile s's number q is a[2s + q], so
    the tiles overlap: a[2s] gets d0 of tile s and -d0 + d1 + d2 of tile s - 1; a[2s + 1] gets
    d1 - d2 + d3 of tile s and -d3 of tile s - 1."""
    even, odd = _every_other(out, axis, 0, t + 1), _every_other(out, axis, 1, t + 1)
    first, rest, last = ([slice(None)] * out.ndim for _ in range(3))
    first[axis], rest[axis], last[axis] = slice(0, t), slice(1, t + 1), t
    first, rest, last = tuple(first), tuple(rest), tuple(last)
    even[first] = d[0]
    even[last] = 0
    np.add(d[1], d[2], out=scratch)
    scratch -= d[0]
    even[rest] += scratch
    np.subtract(d[1], d[2], out=odd[first])
    odd[first] += d[3]
    odd[last] = 0
    odd[rest] -= d[3]


def input_transform(xp, th, tw, rows, out):
    """V = B^T d B for every 4x4 tile of xp (n, 2th+2, 2tw+2, C), tiles at stride 2.
    rows: scratch (4, n, th, 2tw+2, C); out: V (4, 4, n, th, tw, C), frequencies first."""
    _bt_stage(xp, 1, th, rows)                                   # along tile rows
    _bt_stage(rows, 3, tw, [out[:, b] for b in range(4)])        # along tile columns
    return out


def input_transform_backward(dV, th, tw, rows, out, scratch_cols, scratch_rows):
    """The transpose of input_transform: dV (4, 4, n, th, tw, C) -> out = dxp (n, 2th+2,
    2tw+2, C), overwritten.  Work arrays: rows (4, n, th, 2tw+2, C), scratch_cols
    (4, n, th, tw, C), scratch_rows (n, th, 2tw+2, C)."""
    _bt_stage_backward([dV[:, b] for b in range(4)], 3, tw, rows, scratch_cols)
    _bt_stage_backward(rows, 1, th, out, scratch_rows)
    return out


def output_transform(M, n, th, tw, sums, out):
    """Y = A^T M A: M (16, n*th*tw, Cout), frequencies first -> out (n, 2th, 2tw, Cout).
    sums: scratch (2, 4, n*th*tw, Cout)."""
    m = M.reshape((4, 4) + M.shape[1:])
    np.add(m[0], m[1], out=sums[0])                              # A^T along rows:
    sums[0] += m[2]                                              #   m0 + m1 + m2
    np.subtract(m[1], m[2], out=sums[1])                         #   m1 - m2 - m3
    sums[1] -= m[3]
    co = out.shape[3]
    s = sums.reshape(2, 4, n, th, tw, co)
    y = out.reshape(n, th, 2, tw, 2, co).transpose(2, 4, 0, 1, 3, 5)   # (2, 2, n, th, tw, Cout)
    np.add(s[:, 0], s[:, 1], out=y[:, 0])                        # and along columns
    y[:, 0] += s[:, 2]
    np.subtract(s[:, 1], s[:, 2], out=y[:, 1])
    y[:, 1] -= s[:, 3]
    return out


def output_transform_backward(dy, sums, out):
    """dM = A dY A^T: dy (n, 2th, 2tw, Cout) -> out (16, n*th*tw, Cout); sums: scratch
    (2, 4, n, th, tw, Cout)."""
    n, h2, w2, co = dy.shape
    d = dy.reshape(n, h2 // 2, 2, w2 // 2, 2, co).transpose(2, 4, 0, 1, 3, 5)
    for a in range(2):                                           # columns: A = A^T^T
        sums[a, 0] = d[a, 0]
        np.add(d[a, 0], d[a, 1], out=sums[a, 1])
        np.subtract(d[a, 0], d[a, 1], out=sums[a, 2])
        np.negative(d[a, 1], out=sums[a, 3])
    s = sums.reshape(2, 4, -1, co)
    m = out.reshape(4, 4, -1, co)                                # then rows
    m[0] = s[0]
    np.add(s[0], s[1], out=m[1])
    np.subtract(s[0], s[1], out=m[2])
    np.negative(s[1], out=m[3])
    return out
