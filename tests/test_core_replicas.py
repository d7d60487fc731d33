"""core/replicas.py: n copies of a model on n threads compute the step of the one model.

In float64 the copies' outputs, gradient and batch-norm statistics equal the single model's
to 1e-12 (only the summation order differs), so the finite-difference checks of the model's
own backward (tests/test_core_gradcheck.py) carry over; a threaded step repeats bitwise; an
error in one copy ends the step in all of them instead of leaving the others waiting.

    pytest tests/test_core_replicas.py -q
"""
import threading

import numpy as np
import pytest

from core.keyed_random import keyed_noise
from core.losses import softmax_cross_entropy
from core.model import Model
from core.replicas import Replicas

# Every layer kind with per-batch coupling or per-sample randomness: conv (stride 2 too),
# batch norm on images and on features, dropout, max-pool, dense.
SPEC = [{"type": "conv", "out": 6, "kernel": 3}, {"type": "batchnorm"}, {"type": "relu"},
        {"type": "conv", "out": 8, "kernel": 3, "stride": 2, "pad": 1}, {"type": "batchnorm"},
        {"type": "relu"}, {"type": "dropout", "p": 0.3}, {"type": "maxpool", "kernel": 2},
        {"type": "flatten"}, {"type": "dense", "out": 16}, {"type": "batchnorm"},
        {"type": "relu"}, {"type": "dense", "out": 10}]
SHAPE = (12, 12, 1)


def step(net, model, x, labels, noise):
    out = net.forward(x, True, noise)
    loss, dout = softmax_cross_entropy(out, labels, len(labels))
    net.backward(dout)
    return out.copy(), loss, model.grad.copy(), model.state.copy()


def data(batch, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch,) + SHAPE), rng.integers(0, 10, batch),
            keyed_noise(0, 0, np.arange(batch)))


@pytest.mark.parametrize("copies,batch", [(2, 10), (3, 10), (4, 3)])
def test_copies_compute_the_step_of_one_model(copies, batch):
    x, labels, noise = data(batch)
    one = Model(SPEC, SHAPE, seed=1, dtype=np.float64)
    expected = step(one, one, x, labels, noise)
    model = Model(SPEC, SHAPE, seed=1, dtype=np.float64)
    got = step(Replicas(model, copies), model, x, labels, noise)
    for name, want, have in zip(("outputs", "loss", "gradient", "running stats"), expected, got):
        np.testing.assert_allclose(have, want, rtol=1e-12, atol=1e-12, err_msg=name)
    assert np.abs(expected[2]).max() > 1e-3                  # a real gradient


def test_a_threaded_step_repeats_bitwise_and_float32_agrees_with_one_model():
    x, labels, noise = data(10)
    x = x.astype(np.float32)
    runs = []
    for _ in range(2):
        model = Model(SPEC, SHAPE, seed=1)
        runs.append(step(Replicas(model, 2), model, x, labels, noise))
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, b)
    one = Model(SPEC, SHAPE, seed=1)
    np.testing.assert_allclose(runs[0][2], step(one, one, x, labels, noise)[2],
                               rtol=1e-4, atol=1e-6)


def test_copies_share_the_parameters_and_run_on_threads_of_their_own():
    from threadpoolctl import threadpool_info
    model = Model(SPEC, SHAPE, seed=1)
    net = Replicas(model, 2)
    twin = net.copies[1]
    model.theta[:] = 0.25                                    # an update of the model ...
    assert all((twin_w == 0.25).all() for twin_w in twin.layers[0].params.values())
    assert twin.grad is not model.grad                       # ... but a gradient of its own
    seen = []                                                # the thread of each copy
    for copy in net.copies:
        forward = copy.layers[0].forward
        copy.layers[0].forward = lambda x, train, f=forward: (
            seen.append(threading.get_ident()), f(x, train))[1]
    x, _, noise = data(4)
    net.forward(x.astype(np.float32), True, noise)
    assert len(set(seen)) == 2 and threading.get_ident() in seen   # copy 0: the caller
    # BLAS multiplies on the calling thread: the copies are the parallelism.
    assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")


def test_evaluation_on_copies_equals_one_model():
    from dist.evaluate import predict_scores
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (37, 28, 28), dtype=np.uint8)
    model = Model(SPEC, (28, 28, 1), seed=1, dtype=np.float64)
    model.state[:] = rng.random(model.state.size) + 0.5     # trained running statistics
    one = predict_scores(model, images, batch_size=16, threads=1)
    np.testing.assert_allclose(predict_scores(model, images, batch_size=16, threads=3), one,
                               rtol=1e-12, atol=1e-12)


def test_an_error_in_one_copy_ends_the_step_in_all():
    x, labels, _ = data(8)

    def noise(stream, shape):
        raise RuntimeError("bad noise")

    class HalfBroken:                     # copy 0 gets good noise, copy 1 noise that raises
        def rows(self, sel):              # (after the first batch norm: copy 0 waits there)
            return keyed_noise(0, 0, np.arange(8)[sel]) if sel.start == 0 else noise
    model = Model(SPEC, SHAPE, seed=1, dtype=np.float64)
    result = {}

    def run():
        try:
            Replicas(model, 2).forward(x, True, HalfBroken())
        except Exception as error:                         # noqa: BLE001 -- recorded
            result["error"] = error
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "a copy kept waiting at batch norm's sum"
    assert isinstance(result.get("error"), RuntimeError) and "bad noise" in str(result["error"])
