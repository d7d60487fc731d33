"""The moving average of the weights: the formula, slices, and its batch-norm statistics.

    pytest tests/test_core_ema.py -q
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from core.ema import EMA, ema_decay_at
from core.losses import LOSSES
from core.model import Model
from core.optim import SGD
from core.schedules import make_schedule
from tests.test_core_learns import digit_like


def test_the_decay_warms_up_then_stays():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 10_000) == 0.999
    assert ema_decay_at(0.5, 3) == pytest.approx(4 / 13) and ema_decay_at(0.5, 10) == 0.5


def test_the_average_of_a_known_sequence_is_the_formula():
    rng = np.random.default_rng(0)
    thetas = rng.standard_normal((40, 5))              # theta_0 .. theta_39, float64
    states = rng.random((40, 2))
    ema = EMA(thetas[0], states[0], decay=0.8)
    expected, expected_state = thetas[0].copy(), states[0].copy()
    for t in range(39):                                 # after step t the weights are theta_t+1
        ema.update(thetas[t + 1], states[t + 1], t)
        d = min(0.8, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * thetas[t + 1]
        expected_state = d * expected_state + (1 - d) * states[t + 1]
    assert np.allclose(ema.theta, expected, rtol=1e-12, atol=1e-14)
    assert np.allclose(ema.state, expected_state, rtol=1e-12, atol=1e-14)
    # Written out for the first step: d_0 = 0.1, so the average is mostly theta_1.
    first = EMA(thetas[0], states[0], decay=0.8)
    first.update(thetas[1], states[1], 0)
    assert np.allclose(first.theta, 0.1 * thetas[0] + 0.9 * thetas[1])
    # A constant sequence is its own average; the input arrays are not touched.
    still = EMA(np.ones(3, np.float32), np.zeros(1, np.float32), 0.9)
    before = thetas.copy()
    for t in range(5):
        still.update(np.ones(3, np.float32), np.zeros(1, np.float32), t)
    assert (still.theta == 1).all() and (thetas == before).all()


def test_slices_averaged_apart_equal_the_whole_bitwise():
    # A sharded update: each rank averages its own slice of theta; together, the same bits.
    rng = np.random.default_rng(1)
    thetas = rng.standard_normal((12, 1001)).astype(np.float32)
    state = rng.random(6).astype(np.float32)
    whole, parts = EMA(thetas[0], state, 0.99), EMA(thetas[0], state, 0.99)
    bounds = [0, 300, 301, 1001]                         # uneven, and one slice of 1
    for t in range(11):
        whole.update(thetas[t + 1], state, t)
        for lo, hi in zip(bounds, bounds[1:]):
            parts.update(thetas[t + 1], state, t, lo, hi)
    assert np.array_equal(whole.theta, parts.theta) and whole.theta.dtype == np.float32


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, True, "0.9"])
def test_a_bad_decay_is_refused(decay):
    with pytest.raises(ValueError, match="EMA: decay must be in"):
        EMA(np.zeros(2), np.zeros(1), decay)


def population_statistics(spec, theta, x):
    """The running statistics batch norm should have for these weights: each layer's mean and
    unbiased variance over all of x, in one training-mode pass with momentum 1."""
    exact = Model([dict(layer, momentum=1.0) if layer["type"] == "batchnorm" else layer
                   for layer in spec], seed=0)
    exact.theta[...] = theta
    exact.forward(x, train=True)
    return exact.state.copy()


def train(model, opt, ema, x, y, steps, batch, lr, order):
    for t in range(steps):
        pick = order.choice(len(x), batch, replace=False)
        out = model.forward(x[pick], train=True)
        _, dout = LOSSES["xent"](out, y[pick], batch)
        model.backward(dout)
        opt.step(model.theta, model.grad, lr(t))
        ema.update(model.theta, model.state, t)


def test_averaged_batchnorm_statistics_are_those_of_the_averaged_weights():
    """The choice in core/ema.py: the running statistics averaged alongside the weights. After
    a short training with a cosine schedule, they are close to the statistics recomputed for
    the averaged weights over the training data, and the averaged model's outputs with either
    agree; the initial statistics (mean 0, var 1) are far from both."""
    x, y = digit_like(n=256, seed=3)
    spec = [{"type": "conv", "out": 6, "kernel": 5, "stride": 2, "pad": 2},
            {"type": "batchnorm"}, {"type": "relu"}, {"type": "flatten"},
            {"type": "dense", "out": 16}, {"type": "batchnorm"}, {"type": "relu"},
            {"type": "dense", "out": 10}]
    model = Model(spec, seed=1)
    opt = SGD(model.theta.size, momentum=0.9, nesterov=True, weight_decay=1e-4,
              decay_mask=model.decay_mask)
    steps, batch = 300, 32
    lr = make_schedule("cosine", 0.05, steps, warmup_steps=20)
    ema = EMA(model.theta, model.state, decay=0.98)
    order = np.random.default_rng(4)
    with threadpool_limits(1):     # small matrices: threads only wait for each other
        train(model, opt, ema, x, y, steps, batch, lr, order)

    recomputed = population_statistics(spec, ema.theta, x)
    initial = Model(spec, seed=0).state
    gap = np.linalg.norm(ema.state - recomputed) / np.linalg.norm(recomputed)
    assert gap < 0.05, gap
    assert np.linalg.norm(initial - recomputed) / np.linalg.norm(recomputed) > 5 * gap

    averaged = Model(spec, seed=0)
    averaged.theta[...] = ema.theta
    outputs = {}
    for name, state in (("averaged", ema.state), ("recomputed", recomputed)):
        averaged.state[...] = state
        outputs[name] = averaged.forward(x, train=False)
    assert (outputs["averaged"].argmax(1) == outputs["recomputed"].argmax(1)).mean() > 0.98
    assert (outputs["averaged"].argmax(1) == y).mean() > 0.95          # it learned
