"""SGD against hand-computed numbers, argument validation, and the lr schedules.

    pytest tests/test_core_optim.py -q
"""
import math

import numpy as np
import pytest

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


def test_slices_updated_one_by_one_equal_the_whole_update():
    """dist/update.py: each rank updates its slice from the gradient of that slice only."""
    rng = np.random.default_rng(0)
    n = 3 * SGD.BLOCK + 7                                   # slices and blocks that do not align
    theta0, mask = rng.standard_normal(n, dtype=np.float32), (rng.random(n) > 0.1)
    grads = [rng.standard_normal(n, dtype=np.float32) for _ in range(3)]
    kw = dict(momentum=0.9, nesterov=True, weight_decay=5e-4, decay_mask=mask)
    whole, sliced = SGD(n, **kw), SGD(n, **kw)
    theta_whole, theta_sliced = theta0.copy(), theta0.copy()
    cuts = [0, 1000, SGD.BLOCK + 5, n]
    for g in grads:
        whole.step(theta_whole, g, 0.05)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            sliced.step(theta_sliced, g[lo:hi].copy(), 0.05, lo=lo)
    assert theta_whole.tobytes() == theta_sliced.tobytes()
    assert whole.velocity.tobytes() == sliced.velocity.tobytes()


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
