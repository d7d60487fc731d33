"""The network actually learns: small models fit 64 digit-like samples to near-zero loss.

The samples are synthetic "digits": each class is a fixed random stroke pattern drawn on
a 28x28 canvas, and each sample is its class pattern shifted by up to 2 pixels plus
noise, so the models must learn something translation-tolerant, not a lookup of pixels.

    pytest tests/test_core_learns.py -q
"""
import numpy as np

from core.keyed_random import keyed_noise
from core.losses import LOSSES
from core.model import Model
from core.optim import SGD
from core.schedules import make_schedule


def digit_like(n=64, seed=0):
    rng = np.random.default_rng(seed)
    templates = np.zeros((10, 28, 28), np.float32)
    for k in range(10):                               # 3 random thick strokes per class
        for _ in range(3):
            r0, c0, r1, c1 = rng.integers(6, 22, 4)
            for t in np.linspace(0, 1, 30):
                r, c = int(r0 + t * (r1 - r0)), int(c0 + t * (c1 - c0))
                templates[k, r - 1:r + 2, c - 1:c + 2] = 1
    y = np.arange(n) % 10
    x = np.empty((n, 28, 28, 1), np.float32)
    for i in range(n):
        dr, dc = rng.integers(-2, 3, 2)
        x[i, :, :, 0] = np.roll(templates[y[i]], (dr, dc), axis=(0, 1))
    x += 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    return x, y


def fit(spec, loss, steps, lr, x, y, momentum=0.9):
    model = Model(spec, seed=1)
    opt = SGD(model.theta.size, momentum=momentum, weight_decay=1e-4, decay_mask=model.decay_mask)
    schedule = make_schedule("cosine", lr, steps, warmup_steps=10)
    idx = np.arange(len(x))
    for step in range(steps):
        out = model.forward(x, True, keyed_noise(0, step, idx))
        _, d = LOSSES[loss](out, y, len(x))
        model.backward(d)
        opt.step(model.theta, model.grad, schedule(step))
    final, _ = LOSSES[loss](model.forward(x, False), y, len(x))
    return model, final


def test_small_cnn_fits():
    x, y = digit_like()
    spec = [{"type": "conv", "out": 8, "kernel": 5, "stride": 2, "pad": 2}, {"type": "batchnorm"},
            {"type": "relu"}, {"type": "maxpool"}, {"type": "flatten"}, {"type": "dropout", "p": 0.1},
            {"type": "dense", "out": 10}]
    model, final = fit(spec, "xent", 120, 0.05, x, y)
    assert final < 0.05
    assert (model.forward(x, train=False).argmax(axis=1) == y).all()


def test_mlp_fits():
    x, y = digit_like(seed=1)
    spec = [{"type": "flatten"}, {"type": "dense", "out": 32}, {"type": "relu"}, {"type": "dense", "out": 10}]
    model, final = fit(spec, "xent", 150, 0.05, x, y)
    assert final < 0.05


def test_classic_sigmoid_mse_fits():
    x, y = digit_like(seed=2)
    spec = [{"type": "flatten"}, {"type": "dense", "out": 30}, {"type": "sigmoid"},
            {"type": "dense", "out": 10}, {"type": "sigmoid"}]
    model, final = fit(spec, "mse", 200, 3.0, x, y, momentum=0.0)   # Nielsen's eta = 3, no momentum
    assert final < 0.05                               # 0.5 ||y - onehot||^2 per sample
    assert (model.forward(x, train=False).argmax(axis=1) == y).all()
