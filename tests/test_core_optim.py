"""SGD against hand-computed numbers, argument validation, and the lr schedules.

    pytest tests/test_core_optim.py -q
"""
import math

import numpy as np
import pytest

from core.model import Model
from core.optim import SGD
from core.schedules import make_schedule


def two_steps(**kw):
    theta = np.array([1.0, -2.0], np.float64)
    opt = SGD(2, dtype=np.float64, **kw)
    opt.step(theta, np.array([0.5, 1.0]), 0.1)
    first = theta.copy()
    opt.step(theta, np.array([-1.0, 0.25]), 0.1)
    return first, theta, opt.velocity


def test_heavy_ball_by_hand():
    first, theta, v = two_steps(momentum=0.9)
    # step 1: v = g = [0.5, 1]; theta = [1 - 0.05, -2 - 0.1]
    np.testing.assert_allclose(first, [0.95, -2.1])
    # step 2: v = 0.9 [0.5, 1] + [-1, 0.25] = [-0.55, 1.15]; theta -= 0.1 v
    np.testing.assert_allclose(v, [-0.55, 1.15])
    np.testing.assert_allclose(theta, [0.95 + 0.055, -2.1 - 0.115])


def test_nesterov_by_hand():
    first, theta, v = two_steps(momentum=0.9, nesterov=True)
    # step 1: v = [0.5, 1]; theta -= 0.1 (g + 0.9 v) = 0.1 * 1.9 g
    np.testing.assert_allclose(first, [1 - 0.095, -2 - 0.19])
    # step 2: v = [-0.55, 1.15]; theta -= 0.1 ([-1, 0.25] + 0.9 [-0.55, 1.15])
    np.testing.assert_allclose(v, [-0.55, 1.15])
    np.testing.assert_allclose(theta, [0.905 + 0.1 * 1.495, -2.19 - 0.1 * 1.285])


def test_weight_decay_with_mask_by_hand():
    # mask: decay theta[0] only, wd = 0.1
    first, theta, v = two_steps(momentum=0.5, weight_decay=0.1, decay_mask=np.array([1.0, 0.0]))
    # step 1: g = [0.5 + 0.1*1, 1] = [0.6, 1]; v = g; theta = [1 - 0.06, -2.1]
    np.testing.assert_allclose(first, [0.94, -2.1])
    # step 2: g = [-1 + 0.094, 0.25] = [-0.906, 0.25]; v = 0.5 [0.6, 1] + g = [-0.606, 0.75]
    np.testing.assert_allclose(v, [-0.606, 0.75])
    np.testing.assert_allclose(theta, [0.94 + 0.0606, -2.1 - 0.075])


def test_plain_sgd_and_grad_untouched():
    theta = np.ones(3, np.float32)
    grad = np.array([1, 2, 3], np.float32)
    SGD(3, momentum=0.0).step(theta, grad, 0.5)
    np.testing.assert_allclose(theta, [0.5, 0.0, -0.5])
    np.testing.assert_array_equal(grad, [1, 2, 3])
    assert theta.dtype == np.float32


@pytest.mark.parametrize("nesterov,scaled", [(True, False), (True, True), (False, True)])
def test_slices_updated_one_by_one_equal_the_whole_update(nesterov, scaled):
    """dist/update.py: each rank updates its slice from the gradient of that slice only
    (with an lr scale: the scale's slice goes with it)."""
    rng = np.random.default_rng(0)
    n = 3 * SGD.BLOCK + 7                                   # slices and blocks that do not align
    theta0, mask = rng.standard_normal(n, dtype=np.float32), (rng.random(n) > 0.1)
    grads = [rng.standard_normal(n, dtype=np.float32) for _ in range(3)]
    scale = rng.uniform(0.5, 8, n) if scaled else None      # a different factor everywhere
    kw = dict(momentum=0.9, nesterov=nesterov, weight_decay=5e-4, decay_mask=mask,
              lr_scale=scale)
    whole, sliced = SGD(n, **kw), SGD(n, **kw)
    theta_whole, theta_sliced = theta0.copy(), theta0.copy()
    cuts = [0, 1000, SGD.BLOCK + 5, n]
    for g in grads:
        whole.step(theta_whole, g, 0.05)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            sliced.step(theta_sliced, g[lo:hi].copy(), 0.05, lo=lo)
    assert theta_whole.tobytes() == theta_sliced.tobytes()
    assert whole.velocity.tobytes() == sliced.velocity.tobytes()


def test_lr_scale_moves_its_elements_that_many_times_as_far():
    # Momentum 0, no decay, theta 0: one step is -lr * s * grad, so with the same gradient
    # on every element the scaled ones move exactly 3 times as far.
    mask = np.array([0, 1, 0, 1, 1], np.float32)
    theta = np.zeros(5, np.float32)
    SGD(5, momentum=0.0, lr_scale=1 + 2 * mask).step(theta, np.full(5, 0.7, np.float32), 0.1)
    assert (theta[mask == 0] == np.float32(-0.7) * np.float32(0.1)).all()
    assert (theta[mask == 1] == 3 * theta[0]).all() and theta[0] != 0


@pytest.mark.parametrize("nesterov", [False, True])
def test_lr_scale_by_hand(nesterov):
    # theta[1] at 3 x lr: both of its steps are 3 times the plain ones (velocity is unscaled).
    first, theta, v = two_steps(momentum=0.9, nesterov=nesterov)
    first_s, theta_s, v_s = two_steps(momentum=0.9, nesterov=nesterov, lr_scale=[1.0, 3.0])
    start = np.array([1.0, -2.0])
    np.testing.assert_array_equal(v_s, v)
    assert first_s[0] == first[0] and theta_s[0] == theta[0]
    np.testing.assert_allclose(first_s[1] - start[1], 3 * (first[1] - start[1]), rtol=1e-12)
    np.testing.assert_allclose(theta_s[1] - first_s[1], 3 * (theta[1] - first[1]), rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_an_lr_scale_of_ones_is_the_plain_step_bit_for_bit(nesterov):
    rng = np.random.default_rng(1)
    n = SGD.BLOCK + 3
    kw = dict(momentum=0.9, nesterov=nesterov, weight_decay=5e-4,
              decay_mask=rng.random(n) > 0.3)
    plain, ones = SGD(n, **kw), SGD(n, lr_scale=np.ones(n), **kw)
    theta_plain = rng.standard_normal(n, dtype=np.float32)
    theta_ones = theta_plain.copy()
    for lr in (0.1, 0.05, 0.02):
        g = rng.standard_normal(n, dtype=np.float32)
        plain.step(theta_plain, g, lr)
        ones.step(theta_ones, g, lr)
    assert theta_ones.tobytes() == theta_plain.tobytes()
    assert ones.velocity.tobytes() == plain.velocity.tobytes()


def test_a_batch_norm_lr_scale_moves_batch_norm_only():
    # core/model.py marks gamma and beta of every BatchNorm in bn_mask; one step from the same
    # theta and gradient with 4 x lr there leaves every other parameter bit for bit where the
    # plain step puts it, and moves gamma and beta 4 times as far.
    model = Model([{"type": "conv", "out": 4, "kernel": 3, "pad": 1}, {"type": "batchnorm"},
                   {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "out": 8},
                   {"type": "batchnorm"}, {"type": "relu"}, {"type": "dense", "out": 10}],
                  input_shape=(6, 6, 1), seed=3)
    bn = [(model.param_offsets[i], model.param_offsets[i] + 2 * layer.gamma.size)
          for i, layer in enumerate(model.layers) if layer.type_name == "batchnorm"]
    expected = np.zeros(model.theta.size, bool)
    for lo, hi in bn:
        expected[lo:hi] = True
    assert (model.bn_mask == expected).all() and expected.sum() == 2 * (4 + 8)

    rng = np.random.default_rng(2)
    model.forward(rng.standard_normal((16, 6, 6, 1)), train=True)
    model.backward(rng.standard_normal((16, 10)))
    theta0 = model.theta.copy()
    kw = dict(momentum=0.9, weight_decay=5e-4, decay_mask=model.decay_mask)
    plain, scaled = theta0.copy(), theta0.copy()
    SGD(theta0.size, **kw).step(plain, model.grad, 0.05)
    SGD(theta0.size, lr_scale=1 + 3 * model.bn_mask, **kw).step(scaled, model.grad, 0.05)
    assert scaled[~expected].tobytes() == plain[~expected].tobytes()
    moved = theta0[expected] - plain[expected]
    assert (moved != 0).all()
    np.testing.assert_allclose(theta0[expected] - scaled[expected], 4 * moved, rtol=1e-5)


def test_a_slice_must_fit():
    opt = SGD(10)
    with pytest.raises(ValueError, match="grad be a slice of it, got \\(10,\\) and \\(4,\\) at offset 8"):
        opt.step(np.zeros(10, np.float32), np.zeros(4, np.float32), 0.1, lo=8)


@pytest.mark.parametrize("kw,message", [
    ({"momentum": 1.0}, "momentum must be in \\[0, 1\\), got 1.0"),
    ({"momentum": -0.1}, "momentum"),
    ({"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0"),
    ({"weight_decay": float("nan")}, "weight_decay"),
    ({"momentum": 0.0, "nesterov": True}, "nesterov=True requires momentum > 0"),
    ({"decay_mask": np.ones(3)}, "decay_mask must have shape \\(4,\\)"),
    ({"lr_scale": np.ones(3)}, "lr_scale must have shape \\(4,\\)"),
    ({"lr_scale": np.array([1, 1, 0, 1])}, "lr_scale must be finite and > 0 everywhere"),
    ({"lr_scale": np.array([1, np.inf, 1, 1])}, "lr_scale must be finite"),
])
def test_bad_optimizer_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        SGD(4, **kw)


def test_constant_and_step_schedules():
    lr = make_schedule("constant", 0.1, 100)
    assert lr(0) == lr(99) == lr(1000) == 0.1
    lr = make_schedule("step", 0.1, 100, step_size=30, gamma=0.5)
    assert [lr(s) for s in (0, 29, 30, 59, 60, 90)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125])


def test_cosine_schedule_endpoints():
    lr = make_schedule("cosine", 0.2, 100, min_lr=0.02)
    assert lr(0) == pytest.approx(0.2)
    assert lr(50) == pytest.approx(0.11)                       # halfway: the mean
    assert lr(100) == pytest.approx(0.02) and lr(500) == pytest.approx(0.02)
    assert all(lr(s) >= lr(s + 1) for s in range(100))


def test_warmup_is_linear_then_joins():
    lr = make_schedule("cosine", 0.4, 110, warmup_steps=9)
    assert [lr(s) for s in range(9)] == pytest.approx([0.04 * (s + 1) for s in range(9)])
    assert lr(9) == pytest.approx(0.4)                         # cosine starts at the end of warmup
    assert lr(60) == pytest.approx(0.2 * (1 + math.cos(math.pi * 51 / 101)))
    assert lr(110) == pytest.approx(0.0, abs=1e-12)
    lr = make_schedule("step", 0.1, 100, warmup_steps=4, step_size=50)
    assert lr(0) == pytest.approx(0.02) and lr(4) == pytest.approx(0.1) and lr(50) == pytest.approx(0.01)


def test_onecycle_schedule_is_a_ramp_up_then_a_straight_line_down():
    lr = make_schedule("onecycle", 0.4, 110, warmup_steps=9, min_lr=0.04)
    assert lr(0) == pytest.approx(0.04) and lr(9) == pytest.approx(0.4)     # warmup's ramp
    assert lr(59) == pytest.approx(0.4 - 0.36 * 50 / 101)                   # 50 of 101 steps down
    assert lr(110) == pytest.approx(0.04) and lr(500) == pytest.approx(0.04)
    steps = [lr(s) for s in range(9, 111)]
    assert all(a > b for a, b in zip(steps, steps[1:]))                      # straight down


def test_cyclic_schedule_restarts_the_cosine_every_cycle():
    # 3 cycles of 40 steps (the snapshot schedule): each a cosine from 0.3 down to 0.01, the
    # first after 5 warm-up steps; each cycle's last step is its lowest lr.
    lr = make_schedule("cyclic", 0.3, 120, warmup_steps=5, min_lr=0.01, cycles=3)
    cosine = make_schedule("cosine", 0.3, 40, warmup_steps=5, min_lr=0.01)
    assert [lr(s) for s in range(40)] == [cosine(s) for s in range(40)]
    restart = make_schedule("cosine", 0.3, 40, min_lr=0.01)
    for start in (40, 80):
        assert [lr(start + s) for s in range(40)] == pytest.approx([restart(s) for s in range(40)])
    assert lr(40) == pytest.approx(0.3) and lr(80) == pytest.approx(0.3)
    ends = [lr(39), lr(79), lr(119)]
    assert all(e < 0.011 for e in ends) and lr(120) == pytest.approx(0.01)
    # One cycle is the cosine schedule itself, bit for bit.
    one = make_schedule("cyclic", 0.3, 97, warmup_steps=7, cycles=1)
    plain = make_schedule("cosine", 0.3, 97, warmup_steps=7)
    assert [one(s) for s in range(120)] == [plain(s) for s in range(120)]
    # Uneven division: cycles start at floor(c T / M) and every step falls in one cycle.
    lr = make_schedule("cyclic", 1.0, 10, cycles=3)                 # cycles at 0, 3, 6
    assert [s for s in range(10) if lr(s) == 1.0] == [0, 3, 6]


@pytest.mark.parametrize("args,kw,message", [
    (("cyclic", 0.1, 10), {"cycles": 0}, "cycles must be an int in"),
    (("cyclic", 0.1, 10), {"cycles": 2, "warmup_steps": 5}, "must end within the first cycle"),
    (("linear", 0.1, 10), {}, "kind must be one of"),
    (("constant", 0.1, 0), {}, "total_steps"),
    (("constant", 0.1, 10), {"warmup_steps": 11}, "warmup_steps"),
    (("step", 0.1, 10), {}, "step_size must be an int >= 1"),
    (("step", 0.1, 10), {"step_size": 5, "gamma": 0.0}, "gamma"),
    (("cosine", 0.1, 10), {"min_lr": 0.2}, "min_lr"),
])
def test_bad_schedule_arguments(args, kw, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(*args, **kw)


def test_schedule_rejects_bad_step_and_accepts_numpy_ints():
    lr = make_schedule("constant", 0.1, 10)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        lr(-1)
    assert lr(np.int64(3)) == 0.1 and isinstance(lr(np.int64(3)), float)
