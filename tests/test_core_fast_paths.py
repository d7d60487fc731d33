"""The fast paths of core/ against the textbook formulas they replace.

Each speed-up (a fused pass, a reused buffer, a different algorithm for the same product)
must compute the same function: here in float64 against a plain numpy reference written
as in the docstrings, to float rounding; and in float64 against finite differences
(core/gradcheck.py) for every new backward.

    pytest tests/test_core_fast_paths.py -q
"""
import numpy as np
import pytest

from core.gradcheck import check_model
from core.model import Model

TOL = 1e-6


def reference_batchnorm_relu(x, gamma, beta, eps, dy, relu):
    """Textbook batch norm (+ ReLU) on (N, C) in float64: y and dx, dgamma, dbeta."""
    mean, var = x.mean(0), x.var(0)
    xhat = (x - mean) / np.sqrt(var + eps)
    z = gamma * xhat + beta
    y = np.maximum(z, 0) if relu else z
    dz = dy * (z > 0) if relu else dy
    dgamma, dbeta = (dz * xhat).sum(0), dz.sum(0)
    dx = gamma / np.sqrt(var + eps) * (dz - dz.mean(0) - xhat * (dz * xhat).mean(0))
    return y, dx, dgamma, dbeta


@pytest.mark.parametrize("shape", [(6,), (5, 4, 3)])
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_relu_equals_the_textbook(shape, relu):
    spec = [{"type": "batchnorm", "eps": 1e-3}] + ([{"type": "relu"}] if relu else [])
    model = Model(spec, shape, dtype=np.float64)
    assert model.layers[0].relu == relu                    # fused by the Model
    rng = np.random.default_rng(0)
    model.theta[:] = rng.standard_normal(model.theta.size)
    x = rng.standard_normal((7,) + shape) * 2 + 0.5
    dy = rng.standard_normal((7,) + shape)
    for _ in range(2):                                     # reused buffers: same results again
        y = model.forward(x, True)
        dx = model.backward(dy, input_grad=True)
        c = shape[-1]
        ref = reference_batchnorm_relu(x.reshape(-1, c), model.layers[0].gamma,
                                       model.layers[0].beta, 1e-3, dy.reshape(-1, c), relu)
        np.testing.assert_allclose(y.reshape(-1, c), ref[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx.reshape(-1, c), ref[1], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(model.layers[0].dgamma, ref[2], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(model.layers[0].dbeta, ref[3], rtol=1e-10, atol=1e-12)
        y[...] = dx[...] = np.nan       # the layers around may write into these arrays
    # eval mode: running statistics, and the ReLU when fused
    y_eval = model.forward(x, False)
    bn = model.layers[0]
    z = bn.gamma * (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-3) + bn.beta
    np.testing.assert_allclose(y_eval, np.maximum(z, 0) if relu else z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(6,), (4, 4, 3)])
def test_batchnorm_relu_gradients(shape):
    spec = [{"type": "flatten"}, {"type": "dense", "out": 8}, {"type": "batchnorm"},
            {"type": "relu"}, {"type": "dense", "out": 10}] if len(shape) == 1 else \
           [{"type": "conv", "out": 4, "kernel": 3, "pad": 1}, {"type": "batchnorm"},
            {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "out": 10}]
    assert check_model(spec, shape if len(shape) == 3 else (2, 3, 1), "xent", batch=6) < TOL


def reference_conv(x, W, b, stride, pad, dy):
    """Textbook convolution on NHWC, a loop over kernel offsets: y, and dx, dW, db for dy."""
    k, s = W.shape[0], stride
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
    y = np.zeros((len(x), ho, wo, W.shape[3])) + b
    dxp, dW = np.zeros_like(xp), np.zeros_like(W)
    for i in range(k):
        for j in range(k):
            window = xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]
            y += window @ W[i, j]
            dW[i, j] = np.einsum("bhwc,bhwo->co", window, dy)
            dxp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] += dy @ W[i, j].T
    dx = dxp[:, pad:pad + x.shape[1], pad:pad + x.shape[2], :]
    return y, dx, dW, dy.sum((0, 1, 2))


@pytest.mark.parametrize("k,s,p,hw", [(3, 1, 0, (7, 6)), (3, 1, 1, (6, 6)), (5, 2, 2, (8, 8)),
                                      (5, 2, 2, (9, 7)), (3, 2, 0, (7, 8)), (2, 2, 1, (5, 6)),
                                      (1, 2, 0, (5, 5)), (3, 3, 1, (7, 8)), (2, 1, 2, (4, 3)),
                                      (4, 3, 3, (6, 5)), (5, 1, 0, (12, 12)), (5, 1, 1, (9, 8))])
def test_conv_equals_the_textbook(k, s, p, hw):
    # dx by phases (one stride-1 convolution per input phase, Conv2D._dx_by_phases), including
    # kernels smaller than the stride (phases no tap reaches) and pads larger than k - 1; and
    # for stride 1 also by col2im (Conv2D._dx_by_col2im), whichever the layer would choose.
    shape = hw + (3,)
    for col2im in ([False, True] if s == 1 else [False]):
        model = Model([{"type": "conv", "out": 4, "kernel": k, "stride": s, "pad": p}], shape,
                      dtype=np.float64)
        conv = model.layers[0]
        conv.col2im = col2im
        rng = np.random.default_rng(k * 100 + s * 10 + p)
        model.theta[:] = rng.standard_normal(model.theta.size)
        x = rng.standard_normal((3,) + shape)
        dy = rng.standard_normal((3,) + model.output_shape)
        for _ in range(2):                                 # reused buffers: same results again
            y = model.forward(x, True)
            dx = model.backward(dy, input_grad=True)
            ref = reference_conv(x, conv.W, conv.b, s, p, dy)
            np.testing.assert_allclose(y, ref[0], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(dx, ref[1], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(conv.dW, ref[2], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(conv.db, ref[3], rtol=1e-12, atol=1e-12)
            y[...] = dx[...] = np.nan   # the layers around may write into these arrays


SMALL_BEST = [{"type": "conv", "out": 6, "kernel": 3}, {"type": "batchnorm"}, {"type": "relu"},
              {"type": "conv", "out": 6, "kernel": 3}, {"type": "batchnorm"}, {"type": "relu"},
              {"type": "conv", "out": 8, "kernel": 5, "stride": 2, "pad": 2}, {"type": "batchnorm"},
              {"type": "relu"}, {"type": "dropout", "p": 0.4}, {"type": "flatten"},
              {"type": "dense", "out": 10}]


SMALL_CNN = [{"type": "conv", "out": 6, "kernel": 3, "pad": 1}, {"type": "maxpool", "kernel": 2},
             {"type": "relu"}, {"type": "conv", "out": 8, "kernel": 3, "pad": 1},
             {"type": "maxpool", "kernel": 3, "stride": 2}, {"type": "relu"}, {"type": "flatten"},
             {"type": "dense", "out": 10}]


SMALL_FAST = [{"type": "conv", "out": 4, "kernel": 5}, {"type": "maxpool", "kernel": 2},
              {"type": "batchnorm"}, {"type": "relu"}, {"type": "conv", "out": 6, "kernel": 3},
              {"type": "maxpool", "kernel": 2}, {"type": "batchnorm"}, {"type": "relu"},
              {"type": "flatten"}, {"type": "dense", "out": 10}]


def test_the_layer_chooses_col2im_where_the_padding_would_be_most_of_the_work():
    """Stride 1 and H*W >= COL2IM_WASTE * Ho*Wo, at the presets' own shapes (benchmarks.md)."""
    def conv(size, channels, kernel, stride=1, pad=0):
        spec = [{"type": "conv", "out": 8, "kernel": kernel, "stride": stride, "pad": pad}]
        return Model(spec, (size, size, channels)).layers[0]
    assert conv(12, 32, 5).col2im                          # fast-5min's second: 144/64, 2.25x
    assert conv(12, 32, 3).col2im                          # best's 12 -> 10: 1.44x
    assert not conv(26, 32, 3).col2im                      # best's 26 -> 24: 1.17x
    assert not conv(24, 32, 5, stride=2, pad=2).col2im     # stride 2: by phases
    assert not conv(12, 32, 5, pad=2).col2im               # 'same' padding: 1x


@pytest.mark.parametrize("spec", [SMALL_BEST, SMALL_CNN, SMALL_FAST], ids=["best", "cnn", "fast"])
def test_layers_in_chunks_equal_one_pass(monkeypatch, spec):
    # Conv, batch norm and max-pool go through the batch in chunks of samples that fit the
    # cache (core/layers.py, sample_chunks): in float64, many small chunks compute what one
    # pass over the whole batch computes, to rounding, and a chunked step repeats bitwise.
    import core.layers
    from core.keyed_random import keyed_noise
    from core.losses import softmax_cross_entropy
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 14, 14, 1))
    labels = rng.integers(0, 10, 12)
    noise = keyed_noise(0, 0, np.arange(12))

    def step(elements):
        monkeypatch.setattr(core.layers, "CHUNK_ELEMENTS", elements)
        model = Model(spec, (14, 14, 1), seed=1, dtype=np.float64)
        out = model.forward(x, True, noise)
        model.backward(softmax_cross_entropy(out, labels, 12)[1])
        return out.copy(), model.grad.copy(), model.state.copy()

    whole, chunked, again = step(2 ** 30), step(2 ** 9), step(2 ** 9)
    for a, b, c in zip(whole, chunked, again):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(c, b)
    assert np.abs(whole[1]).max() > 1e-3                   # a real gradient
