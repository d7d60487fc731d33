"""The flat arena: every layer parameter, gradient and BN statistic is a view into
model.theta / model.grad / model.state, and stays one through forward, backward and
optimizer steps.

    pytest tests/test_core_arena.py -q
"""
import numpy as np

from core.keyed_random import keyed_noise
from core.losses import softmax_cross_entropy
from core.model import Model
from core.optim import SGD

SPEC = [{"type": "conv", "out": 4, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
        {"type": "maxpool"}, {"type": "flatten"}, {"type": "dense", "out": 8},
        {"type": "batchnorm"}, {"type": "relu"}, {"type": "dropout", "p": 0.3},
        {"type": "dense", "out": 10}]


def views(model):
    """(layer index, name, param view, grad view) for every trainable tensor."""
    return [(l.index, n, l.params[n], l.grads[n]) for l in model.layers for n in l.params]


def train_step(model, opt, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((6, 8, 8, 1), dtype=np.float32)
    out = model.forward(x, True, keyed_noise(0, seed, np.arange(6)))
    _, d = softmax_cross_entropy(out, rng.integers(0, 10, 6), 6)
    model.backward(d)
    opt.step(model.theta, model.grad, 0.1)


def test_views_share_memory_and_tile_the_arena():
    model = Model(SPEC, (8, 8, 1))
    total = 0
    for _, name, p, g in views(model):
        assert np.shares_memory(p, model.theta) and np.shares_memory(g, model.grad)
        assert p.base is model.theta or p.base.base is model.theta
        total += p.size
    assert total == model.theta.size == model.grad.size == model.decay_mask.size
    assert model.theta.flags.c_contiguous and model.theta.dtype == np.float32
    # writing through theta is visible in the layer, and vice versa
    model.theta[:] = np.arange(model.theta.size)
    assert model.layers[0].W.ravel()[0] == 0 and model.layers[0].b[0] == 36   # W has 3*3*1*4
    model.layers[-1].b[...] = -1
    assert (model.theta[-10:] == -1).all()


def test_views_not_rebound_by_forward_backward_step():
    model = Model(SPEC, (8, 8, 1))
    opt = SGD(model.theta.size, momentum=0.9, weight_decay=1e-4, decay_mask=model.decay_mask)
    before = [(i, n, id(p), id(g)) for i, n, p, g in views(model)]
    w_before = model.layers[0].W.copy()
    for step in range(3):
        train_step(model, opt, step)
    after = [(i, n, id(model.layers[i].params[n]), id(model.layers[i].grads[n])) for i, n, _, _ in views(model)]
    assert before == after
    for i, n, p, g in views(model):
        assert getattr(model.layers[i], n) is p and getattr(model.layers[i], "d" + n) is g
        assert np.shares_memory(p, model.theta) and np.shares_memory(g, model.grad)
    assert not np.array_equal(model.layers[0].W, w_before)     # the step moved the layer's weights


def test_backward_overwrites_the_whole_grad():
    model = Model(SPEC, (8, 8, 1))
    rng = np.random.default_rng(0)
    x = rng.random((6, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, 6)

    def grad():
        out = model.forward(x, True, keyed_noise(0, 0, np.arange(6)))
        model.backward(softmax_cross_entropy(out, y, 6)[1])
        return model.grad.copy()

    reference = grad()
    model.grad[:] = np.nan                                     # garbage must not survive
    np.testing.assert_array_equal(grad(), reference)


def test_batchnorm_state_aliasing():
    model = Model(SPEC, (8, 8, 1))
    bns = [l for l in model.layers if l.type_name == "batchnorm"]
    assert model.state.size == 2 * (4 + 8)
    for bn in bns:
        for name in ("running_mean", "running_var"):
            assert np.shares_memory(bn.state[name], model.state)
            assert getattr(bn, name) is bn.state[name]
    np.testing.assert_array_equal(bns[0].running_var, 1)
    ids = [id(bn.running_mean) for bn in bns]
    train_step(model, SGD(model.theta.size), 0)
    assert [id(bn.running_mean) for bn in bns] == ids
    assert np.abs(bns[0].running_mean).max() > 0              # updated in place, visible in state
    model.state[:] = 7
    assert (bns[1].running_var == 7).all()


def test_decay_mask_marks_weights_only():
    model = Model(SPEC, (8, 8, 1))
    for layer in model.layers:
        for name, p in layer.params.items():
            off = p.ctypes.data - model.theta.ctypes.data
            seg = model.decay_mask[off // 4: off // 4 + p.size]
            assert (seg == (1.0 if name == "W" else 0.0)).all(), (layer.index, name)


def test_optimizer_velocity_restorable_in_place():
    model = Model(SPEC, (8, 8, 1))
    opt = SGD(model.theta.size)
    v = opt.velocity
    opt.velocity[...] = 0.5
    train_step(model, opt)
    assert opt.velocity is v
