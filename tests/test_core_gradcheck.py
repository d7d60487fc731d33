"""Backprop vs central differences (float64) for every layer, both losses, whole models.

    pytest tests/test_core_gradcheck.py -q
"""
import numpy as np
import pytest

from core.gradcheck import check_layer, check_model, check_model_at
from core.keyed_random import keyed_noise
from core.losses import mse, softmax, softmax_cross_entropy
from core.model import Model

TOL = 1e-6

LAYER_CASES = [
    ({"type": "conv", "out": 3, "kernel": 3, "stride": 1, "pad": 1}, (6, 6, 1)),
    ({"type": "conv", "out": 4, "kernel": 3, "stride": 1, "pad": 0}, (6, 5, 2)),
    ({"type": "conv", "out": 4, "kernel": 3, "stride": 2, "pad": 0}, (7, 7, 2)),
    ({"type": "conv", "out": 2, "kernel": 3, "stride": 2, "pad": 1}, (6, 7, 3)),
    ({"type": "conv", "out": 5, "kernel": 2, "stride": 2, "pad": 1}, (5, 6, 3)),
    ({"type": "conv", "out": 3, "kernel": 1, "stride": 1, "pad": 0}, (4, 4, 4)),
    ({"type": "conv", "out": 2, "kernel": 5, "stride": 1, "pad": 2}, (5, 5, 2)),
    ({"type": "conv", "out": 2, "kernel": 2, "stride": 1, "pad": 2}, (4, 3, 2)),   # pad > k-1: col2im
    ({"type": "conv", "out": 3, "kernel": 3, "stride": 3, "pad": 1}, (7, 7, 1)),
    ({"type": "conv", "out": 3, "kernel": 5, "stride": 2, "pad": 2}, (8, 7, 2)),   # best's downsampling
    ({"type": "conv", "out": 2, "kernel": 3, "stride": 2, "pad": 0}, (7, 6, 1)),   # Cin 1: cols transposed
    ({"type": "maxpool", "kernel": 2}, (6, 6, 3)),
    ({"type": "maxpool", "kernel": 3, "stride": 2}, (7, 7, 2)),      # overlapping windows
    ({"type": "maxpool", "kernel": 2, "stride": 1}, (5, 5, 2)),
    ({"type": "maxpool", "kernel": 3}, (7, 8, 2)),                   # ragged edge is dropped
    ({"type": "maxpool", "kernel": 2}, (7, 6, 2)),                   # odd height: general path
    ({"type": "batchnorm"}, (5,)),
    ({"type": "batchnorm", "momentum": 0.5, "eps": 1e-3}, (4, 4, 3)),
    ({"type": "dropout", "p": 0.5}, (10,)),
    ({"type": "dropout", "p": 0.2}, (3, 3, 2)),
    ({"type": "dense", "out": 5}, (7,)),
    ({"type": "relu"}, (3, 4)),
    ({"type": "sigmoid"}, (6,)),
    ({"type": "tanh"}, (2, 3, 2)),
    ({"type": "flatten"}, (2, 3, 4)),
]


@pytest.mark.parametrize("spec,shape", LAYER_CASES, ids=lambda v: str(v))
def test_layer_gradients(spec, shape):
    assert check_layer(spec, shape) < TOL


def test_eval_mode_check_for_plain_layers():
    assert check_layer({"type": "dense", "out": 3}, (4,), train=False) < TOL
    with pytest.raises(ValueError, match="train mode"):
        check_layer({"type": "batchnorm"}, (4,), train=False)


def _numeric_loss_grad(loss, z, y, divisor, eps=1e-6):
    num = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        old = z[i]
        z[i] = old + eps
        lp = loss(z, y, divisor)[0]
        z[i] = old - eps
        lm = loss(z, y, divisor)[0]
        z[i] = old
        num[i] = (lp - lm) / (2 * eps)
    return num


def smoothed(z, y, divisor):
    return softmax_cross_entropy(z, y, divisor, smoothing=0.1)


@pytest.mark.parametrize("loss", [softmax_cross_entropy, smoothed, mse])
def test_loss_gradients(loss):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4)) * 3
    y = rng.integers(0, 4, 5)
    value, d = loss(z, y, 7.0)
    num = _numeric_loss_grad(loss, z, y, 7.0)
    assert np.max(np.abs(d - num) / np.maximum(np.abs(d) + np.abs(num), 1e-3)) < TOL
    assert d.dtype == z.dtype


def test_loss_values_by_hand():
    z = np.array([[0.0, 0.0], [1000.0, 0.0]])                   # huge logit: must stay finite
    value, d = softmax_cross_entropy(z, np.array([0, 1]), 2)
    assert value == pytest.approx((np.log(2) + 1000.0) / 2)
    np.testing.assert_allclose(d, [[-0.25, 0.25], [0.5, -0.5]])
    value, d = mse(np.array([[0.5, 0.25]]), np.array([1]), 4)
    assert value == pytest.approx(0.5 * (0.25 + 0.5625) / 4)   # 0.5 ||y - onehot||^2 / divisor
    np.testing.assert_allclose(d, [[0.125, -0.1875]])
    p = softmax(np.array([[1e4, 0.0, -1e4]], np.float32))
    assert p.dtype == np.float32 and np.isfinite(p).all() and p[0, 0] == 1


def test_label_smoothing_by_hand():
    # Two classes, smoothing 0.2: the target is (0.9, 0.1) for label 0.
    z = np.array([[2.0, 0.0]])
    p = softmax(z)[0]
    value, d = softmax_cross_entropy(z, np.array([0]), 1, smoothing=0.2)
    assert value == pytest.approx(-0.9 * np.log(p[0]) - 0.1 * np.log(p[1]))
    np.testing.assert_allclose(d, [[p[0] - 0.9, p[1] - 0.1]])
    assert softmax_cross_entropy(z, np.array([0]), 1, smoothing=0.0)[0] == \
        softmax_cross_entropy(z, np.array([0]), 1)[0]


def test_loss_float32_stays_float32_and_empty_batch():
    z = np.zeros((3, 10), np.float32)
    for loss in (softmax_cross_entropy, mse):
        assert loss(z, np.array([1, 2, 3]), 8)[1].dtype == np.float32
        value, d = loss(z[:0], np.array([], int), 8)
        assert value == 0 and d.shape == (0, 10)
    with pytest.raises(ValueError, match="labels"):
        softmax_cross_entropy(z, np.array([1, 2, 10]), 3)


SMALL_CNN = [{"type": "conv", "out": 4, "kernel": 3, "pad": 1}, {"type": "relu"},
             {"type": "maxpool", "kernel": 2}, {"type": "conv", "out": 6, "kernel": 3, "stride": 2},
             {"type": "batchnorm"}, {"type": "tanh"}, {"type": "flatten"},
             {"type": "dropout", "p": 0.3}, {"type": "dense", "out": 10}]
SMALL_MLP = [{"type": "flatten"}, {"type": "dense", "out": 16}, {"type": "batchnorm"},
             {"type": "relu"}, {"type": "dropout", "p": 0.5}, {"type": "dense", "out": 10}]
CLASSIC = [{"type": "flatten"}, {"type": "dense", "out": 12}, {"type": "sigmoid"},
           {"type": "dense", "out": 10}, {"type": "sigmoid"}]


def test_small_cnn_end_to_end():
    assert check_model(SMALL_CNN, (10, 10, 2), "xent") < TOL


def test_small_mlp_end_to_end():
    assert check_model(SMALL_MLP, (6, 6, 1), "xent", batch=6) < TOL


def test_sigmoid_mse_net_end_to_end():
    assert check_model(CLASSIC, (5, 5, 1), "mse") < TOL


def test_check_model_at_on_a_float32_model():
    model = Model(SMALL_MLP, (6, 6, 1), seed=3)                # the real float32 model
    rng = np.random.default_rng(0)
    x = rng.random((8, 6, 6, 1), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    theta = model.theta.copy()
    err = check_model_at(model, x, y, "xent", 16, keyed_noise(0, 1, np.arange(8)))
    assert err < TOL
    np.testing.assert_array_equal(model.theta, theta)            # untouched


def test_gradcheck_catches_a_wrong_backward(monkeypatch):
    from core.layers import Tanh
    monkeypatch.setattr(Tanh, "backward", lambda self, dy: dy * (1 - self.y))   # wrong
    assert check_layer({"type": "tanh"}, (6,)) > 1e-2


def test_maxpool_then_relu_is_relu_then_maxpool():
    # The cnn preset pools before its ReLUs (fewer numbers through the ReLU): the function and
    # the gradient must be those of the usual order.
    conv = {"type": "conv", "out": 6, "kernel": 3, "pad": 1}
    tail = [{"type": "flatten"}, {"type": "dense", "out": 10}]
    usual = Model([conv, {"type": "relu"}, {"type": "maxpool"}, *tail], input_shape=(8, 8, 1), seed=3)
    swapped = Model([conv, {"type": "maxpool"}, {"type": "relu"}, *tail], input_shape=(8, 8, 1), seed=3)
    assert np.array_equal(usual.theta, swapped.theta)
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 1)).astype(np.float32)
    dout = np.random.default_rng(1).standard_normal((5, 10)).astype(np.float32)
    assert np.array_equal(usual.forward(x, train=True), swapped.forward(x, train=True))
    usual.backward(dout)
    swapped.backward(dout)
    assert np.array_equal(usual.grad, swapped.grad)



@pytest.mark.parametrize("ties", [False, True])
def test_tiled_maxpool_backward_equals_the_offset_loop(ties):
    # The 2x2 pool's fast backward (windows that tile the input) must route the gradient
    # exactly as the general loop does, including to the first of tied maxima (windows of
    # zeros after a ReLU, or repeated values).
    from core.conv import MaxPool2D
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 6, 3)).astype(np.float32)
    if ties:
        x = np.maximum(np.round(x), 0)                   # many equal values per window
    layer = MaxPool2D(0, x.shape[1:], 2, 2)
    assert layer.tiles
    layer.forward(x, True)
    dy = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    tiled, looped = np.empty_like(x), np.empty_like(x)
    layer._backward_tiles(layer.x, layer.y, dy, tiled)
    layer._backward_offsets(layer.x, layer.y, dy, looped)
    assert np.array_equal(tiled, looped)
    windows = tiled.reshape(4, 4, 2, 3, 2, 3)
    assert np.array_equal(windows.sum(axis=(2, 4)), dy)  # each window's dy goes to one input
    assert ((windows != 0).sum(axis=(2, 4)) <= 1).all()
