"""Synchronized BatchNorm: two "ranks" (threads) that each hold part of a batch and sum
through a real exchanging `reduce` must compute exactly what one process computes on the
whole batch -- outputs, input gradients, parameter gradients (after summing, as the
allreduce does) and running statistics.

    pytest tests/test_core_batchnorm_reduce.py -q
"""
import threading

import numpy as np
import pytest

from core.keyed_random import keyed_noise
from core.losses import softmax_cross_entropy
from core.model import Model


class ThreadAllreduce:
    """An allreduce between n threads: each deposits its vector, all wait, all sum the
    slots in rank order (so every rank gets bit-identical totals), all wait again."""

    def __init__(self, n):
        self.slots = [None] * n
        self.calls = [0] * n
        self.barrier = threading.Barrier(n, timeout=20)

    def for_rank(self, rank):
        def reduce(a):
            self.slots[rank] = np.array(a, copy=True)
            self.barrier.wait()
            total = self.slots[0].copy()
            for s in self.slots[1:]:
                total += s
            self.barrier.wait()               # nobody overwrites a slot still being read
            self.calls[rank] += 1
            return total
        return reduce


def run_ranks(*fns):
    """Run fns concurrently, one thread each; return their results, re-raise any error."""
    results, errors = [None] * len(fns), []

    def target(i):
        try:
            results[i] = fns[i]()
        except BaseException as e:            # noqa: BLE001 -- surfaced below
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("shape", [(5,), (3, 3, 4)])
@pytest.mark.parametrize("split", [(4, 4), (5, 3), (8, 0)])
def test_two_ranks_equal_one_batch(shape, split):
    spec = [{"type": "batchnorm", "momentum": 0.3}]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8,) + shape) * 3 + 1
    dy = rng.standard_normal((8,) + shape)
    full = Model(spec, shape, dtype=np.float64)
    full.theta[:] = rng.standard_normal(full.theta.size)     # gamma, beta != 1, 0
    y_full = full.forward(x, True)
    dx_full = full.backward(dy, input_grad=True)

    comm = ThreadAllreduce(2)
    parts = [slice(0, split[0]), slice(split[0], 8)]           # rank 1 may get nothing
    ranks = []
    for r in range(2):
        m = Model(spec, shape, dtype=np.float64)
        m.theta[:] = full.theta
        m.reduce = comm.for_rank(r)                            # set after construction
        ranks.append(m)

    def work(r):
        m, s = ranks[r], parts[r]
        y = m.forward(x[s], True)
        dx = m.backward(dy[s], input_grad=True)
        return y, dx, m.grad.copy(), m.state.copy()

    out = run_ranks(lambda: work(0), lambda: work(1))
    np.testing.assert_allclose(np.concatenate([o[0] for o in out]), y_full, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([o[1] for o in out]), dx_full, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out[0][2] + out[1][2], full.grad, rtol=1e-12, atol=1e-12)
    for o in out:
        np.testing.assert_allclose(o[3], full.state, rtol=1e-12)   # same running stats everywhere
    assert comm.calls == [3, 3]            # forward: [sums, count] and centered squares; backward: one


def test_eval_mode_uses_running_stats_not_the_batch():
    m = Model([{"type": "batchnorm"}], (3,), dtype=np.float64)
    m.state[:] = [1, 2, 3, 4, 4, 4]                            # running mean, running var
    y = m.forward(np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]), False)
    np.testing.assert_allclose(y, [[0, 0, 0], [1, 1, 1]], atol=1e-5)


SPEC = [{"type": "conv", "out": 3, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
        {"type": "maxpool"}, {"type": "flatten"}, {"type": "dense", "out": 12},
        {"type": "batchnorm"}, {"type": "relu"}, {"type": "dropout", "p": 0.5},
        {"type": "dense", "out": 10}]


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_model_half_batch_gradients_sum_to_full_batch(dtype, rtol):
    rng = np.random.default_rng(2)
    idx = np.array([3, 17, 42, 5, 99, 1000, 7, 64, 8])         # global sample indices, B = 9
    x = rng.random((9, 6, 6, 1))
    y = rng.integers(0, 10, 9)
    seed, epoch, b = 5, 2, len(idx)

    full = Model(SPEC, (6, 6, 1), seed=seed, dtype=dtype)
    loss_full, d = softmax_cross_entropy(full.forward(x, True, keyed_noise(seed, epoch, idx)), y, b)
    full.backward(d)

    comm = ThreadAllreduce(2)

    def rank(r):                                               # rank r takes every 2nd sample
        m = Model(SPEC, (6, 6, 1), seed=seed, dtype=dtype, reduce=comm.for_rank(r))
        sl = slice(r, None, 2)
        out = m.forward(x[sl], True, keyed_noise(seed, epoch, idx[sl]))
        loss, d = softmax_cross_entropy(out, y[sl], b)         # divisor: the GLOBAL batch
        m.backward(d)
        return loss, m.grad.copy(), m.state.copy()

    (l0, g0, s0), (l1, g1, s1) = run_ranks(lambda: rank(0), lambda: rank(1))
    assert l0 + l1 == pytest.approx(loss_full, rel=rtol)
    scale = np.abs(full.grad).max()
    np.testing.assert_allclose(g0 + g1, full.grad, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(s0, full.state, rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(s0, s1)
    assert np.abs(full.grad).max() > 0


def test_dropout_needs_noise_in_train_mode():
    m = Model([{"type": "flatten"}, {"type": "dropout", "p": 0.5}], (2, 2, 1))
    with pytest.raises(ValueError, match="layer 1 \\(dropout\\): train mode needs noise"):
        m.forward(np.ones((2, 2, 2, 1)), True)
    np.testing.assert_array_equal(m.forward(np.ones((2, 2, 2, 1)), False), np.ones((2, 4)))


def test_rank_with_no_samples_runs_the_whole_model():
    m = Model(SPEC, (6, 6, 1))
    out = m.forward(np.zeros((0, 6, 6, 1), np.float32), True, keyed_noise(0, 0, np.arange(0)))
    assert out.shape == (0, 10)
    loss, d = softmax_cross_entropy(out, np.zeros(0, int), 8)
    m.backward(d)
    assert loss == 0 and np.all(m.grad == 0)
