"""The fast paths of core/ against the textbook formulas they replace.

Each speed-up (a fused pass, a reused buffer, a different algorithm for the same product)
must compute the same function: here in float64 against a plain numpy reference written
as in the docstrings, to float rounding; and in float64 against finite differences
(core/gradcheck.py) for every new backward.

    /work/venv/bin/pytest tests/test_core_fast_paths.py -q
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
