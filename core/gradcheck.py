"""Gradient checking: compare backprop with central differences, in float64.

For a scalar loss L(v) and one entry v_i, the central difference

    n_i = (L(v + eps e_i) - L(v - eps e_i)) / (2 eps)

has error O(eps^2) from truncation plus O(ulp(L) / eps) from rounding; in float64 with
eps = 1e-6 both are around 1e-10 relative, so a correct backward agrees to ~1e-8 and
a wrong one (a missing term, a transposed index) is off by O(1).  We report

    rel = |a - n| / max(|a| + |n|, tiny)        max over the checked entries

checking every entry of small tensors and a random subset (max_checks) of big ones.
`tiny` = 1e-3 * max(|L|, 1): rounding in L makes n uncertain by ~1e-16 |L| / eps =
1e-10 |L| at eps = 1e-6, which no backward can beat.  So entries whose gradient is below
1e-3 |L| are held to an absolute 1e-9 |L| (10x that noise), all others to relative 1e-6.
Without a floor an exact zero gradient (a conv bias followed by BatchNorm: a = 1e-17,
n = 0) would score "100% wrong".

    check_layer(spec, input_shape)    one layer; loss = a random linear functional sum(C * y),
                                      checks dL/dx and every parameter gradient
    check_model(spec, input_shape, "xent")   a whole float64 model with its loss
    check_model_at(model, x, y, "xent", divisor, noise)   the ACTUAL model (a float64 copy
                                      of its current theta and state) at a real batch;
                                      what the training command's --debug flag calls

Dropout sees the same fixed noise in every evaluation, so its mask is a constant.
BatchNorm is checked in train mode (its backward is defined for train mode); the float64
copy of check_model_at uses the identity reduce, i.e. it checks the local batch.

    python -m core.gradcheck        # checks a small CNN and the classic sigmoid/MSE net
Tested by tests/test_core_gradcheck.py.
"""
import numpy as np

from core.keyed_random import keyed_noise
from core.losses import LOSSES
from core.model import Model


def rel_error(a, n, tiny=1e-10):
    """Elementwise |a - n| / max(|a| + |n|, tiny)."""
    a, n = np.asarray(a, np.float64), np.asarray(n, np.float64)
    return np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), tiny)


def _entries(size, rng, max_checks):
    return np.arange(size) if size <= max_checks else rng.choice(size, max_checks, replace=False)


def _max_error(f, arr, analytic, idx, eps):
    """Perturb arr.flat[i] for i in idx (arr is what f reads); compare with analytic.flat."""
    flat = arr.reshape(-1)                     # a view: writing it perturbs the input of f
    tiny = 1e-3 * max(abs(f()), 1.0)
    worst = 0.0
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        lp = f()
        flat[i] = old - eps
        lm = f()
        flat[i] = old
        worst = max(worst, float(rel_error(analytic.flat[i], (lp - lm) / (2 * eps), tiny)))
    return worst


def _param_errors(model, f, rng, eps, max_checks):
    """Max error over every parameter tensor (grads must already be in model.grad)."""
    grads = {(l.index, name): g.copy() for l in model.layers for name, g in l.grads.items()}
    worst = 0.0
    for layer in model.layers:
        for name, value in layer.params.items():
            idx = _entries(value.size, rng, max_checks)
            worst = max(worst, _max_error(f, value, grads[layer.index, name], idx, eps))
    return worst


def check_layer(layer_spec, input_shape, batch=4, seed=0, eps=1e-6, train=True, max_checks=50):
    """Max relative error of one layer's input and parameter gradients (float64)."""
    model = Model([layer_spec], input_shape, seed=seed, dtype=np.float64)
    if not train and model.spec[0]["type"] in ("batchnorm", "dropout"):
        raise ValueError(f"check_layer: {model.spec[0]['type']} backward is defined for train mode only")
    rng = np.random.default_rng(seed + 1)
    model.theta += 0.5 * rng.standard_normal(model.theta.size)   # biases, gamma, beta != 0, 1
    model.state[:] = 0.5 + rng.random(model.state.size)           # running mean / var for eval
    x = rng.standard_normal((batch,) + model.input_shape)
    noise = keyed_noise(seed, 0, np.arange(batch))                # the same mask every call
    coeff = rng.standard_normal((batch,) + model.output_shape)    # loss = sum(coeff * y)

    def f():
        return float(np.sum(coeff * model.forward(x, train, noise)))

    model.forward(x, True, noise)
    dx = model.backward(coeff, input_grad=True)
    worst = _max_error(f, x, dx.copy(), _entries(x.size, rng, max_checks), eps)
    return max(worst, _param_errors(model, f, rng, eps, max_checks))


def check_model_at(model, x, y, loss, divisor, noise=None, eps=1e-6, max_checks=50, seed=0):
    """Max relative error of the parameter gradients of `model` at batch (x, y), computed
    on a float64 copy (the model itself is not touched).  loss: "xent", "mse" or a callable."""
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    m = Model(model.spec, model.input_shape, seed=model.seed, dtype=np.float64)
    m.theta[:] = model.theta
    m.state[:] = model.state
    x = np.asarray(x, np.float64)
    state0 = m.state.copy()

    def f():
        m.state[:] = state0          # BN running stats do not affect train mode; keep them tidy
        return loss_fn(m.forward(x, True, noise), y, divisor)[0]

    f()
    _, dout = loss_fn(m.forward(x, True, noise), y, divisor)
    m.backward(dout)
    return _param_errors(m, f, np.random.default_rng(seed), eps, max_checks)


def check_model(spec, input_shape, loss, batch=4, seed=0, eps=1e-6, max_checks=50):
    """A whole model end to end with its loss, float64, at a random batch."""
    model = Model(spec, input_shape, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    model.theta += 0.1 * rng.standard_normal(model.theta.size)   # non-zero biases
    x = rng.standard_normal((batch,) + model.input_shape)
    y = rng.integers(0, model.output_shape[-1], batch)
    noise = keyed_noise(seed, 0, np.arange(batch))
    return check_model_at(model, x, y, loss, batch, noise, eps, max_checks, seed)


if __name__ == "__main__":
    cnn = [{"type": "conv", "out": 4, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
           {"type": "maxpool"}, {"type": "flatten"}, {"type": "dropout", "p": 0.3},
           {"type": "dense", "out": 10}]
    classic = [{"type": "flatten"}, {"type": "dense", "out": 30}, {"type": "sigmoid"},
               {"type": "dense", "out": 10}, {"type": "sigmoid"}]
    print(f"small CNN, xent:     max rel error {check_model(cnn, (8, 8, 1), 'xent'):.2e}")
    print(f"sigmoid net, mse:    max rel error {check_model(classic, (8, 8, 1), 'mse'):.2e}")
