"""The deskew input layer: it straightens slanted strokes, leaves upright ones alone, works on
each image by itself, and sits in a model like any layer (spec, training step, checkpoints)."""
import numpy as np
import pytest

from core.deskew import deskew, deskew_raw, moments
from core.keyed_random import sample_keys
from core.model import Model
from core.resample import bilinear
from data.augment import random_affine
from data.hdf5 import read_arrays
from data.shards import normalize, read_epoch_shard
from dist.config import load_config
from dist.train import local_batch


def slanted_bar(slant: float, size: int = 28) -> np.ndarray:
    """A 3-pixel-wide vertical bar, sheared so that it moves `slant` px right per row down."""
    img = np.zeros((size, size), np.float32)
    for r in range(4, 24):
        centre = 13.5 + slant * (r - 13.5)
        for c in range(size):
            img[r, c] = max(0.0, 1.5 - abs(c - centre))   # a soft, anti-aliased stroke
    return img * 200


def test_a_slanted_bar_comes_out_upright_and_centred():
    bar = slanted_bar(0.4)[None] + 10               # background 10: the minimum is the zero
    cy, cx, alpha = moments(bar)
    assert alpha[0] == pytest.approx(0.4, abs=0.02)
    out = deskew(bar)
    cy, cx, alpha = moments(out)
    assert abs(alpha[0]) < 0.02
    assert (cy[0], cx[0]) == (pytest.approx(13.5, abs=0.05), pytest.approx(13.5, abs=0.05))
    # Upright: every row of the bar now has its mass in the same columns as the straight bar.
    upright = slanted_bar(0.0)
    rows = slice(6, 22)
    assert np.abs(out[0, rows] - 10 - upright[rows]).max() < 0.25 * upright.max()
    assert out.min() == pytest.approx(10)            # the background fills in, not zeros


def test_an_upright_centred_digit_is_left_exactly_as_it_is():
    bar = slanted_bar(0.0)[None]
    assert np.array_equal(deskew(bar), bar)


def test_each_image_is_deskewed_on_its_own():
    """Batch composition must not matter: ranks hold different parts of a global batch."""
    rng = np.random.default_rng(0)
    batch = rng.random((5, 28, 28)).astype(np.float32) * (rng.random((5, 28, 28)) > 0.8)
    whole = deskew(batch)
    for i in range(5):
        assert np.array_equal(whole[i:i + 1], deskew(batch[i:i + 1]))


def test_blank_and_degenerate_images_do_not_blow_up():
    blank = np.zeros((1, 28, 28), np.float32)
    line = np.zeros((1, 28, 28), np.float32)
    line[0, 14, 3:25] = 255                          # one horizontal stroke: var_y = 0
    out = deskew(np.concatenate([blank, line]))
    assert np.isfinite(out).all() and (out[0] == 0).all()
    assert out[1].sum() == pytest.approx(line.sum(), rel=1e-3)


def test_real_digits_lose_their_slant_and_keep_their_ink(mnist_h5):
    images, _ = read_arrays(mnist_h5, "test")
    images = images[:500]
    before = np.abs(moments(images)[2])
    after_images = deskew(images)
    after = np.abs(moments(after_images)[2])
    assert before.mean() > 0.1 and after.mean() < 0.01
    ink_before, ink_after = images.sum(axis=(1, 2)), after_images.sum(axis=(1, 2))
    assert np.median(np.abs(ink_after / ink_before - 1)) < 0.02   # ink is moved, not lost


def test_the_layer_deskews_normalised_model_input(mnist_h5):
    """In a model, it acts on normalised floats (background below zero) as on raw pixels."""
    images, _ = read_arrays(mnist_h5, "test")
    x = normalize(images[:8])                                    # (8, 28, 28, 1)
    model = Model([{"type": "deskew"}, {"type": "flatten"}])
    from_layer = model.forward(x, train=False).reshape(8, 28, 28)
    from_raw = normalize(deskew(images[:8].astype(np.float32)).clip(0, 255))[..., 0]
    assert np.abs(from_layer - from_raw).max() < 1e-3


def test_a_model_with_deskew_trains_and_has_no_input_gradient():
    spec = [{"type": "deskew"}, {"type": "conv", "out": 4, "kernel": 3}, {"type": "relu"},
            {"type": "flatten"}, {"type": "dense", "out": 10}]
    model = Model(spec, seed=0)
    x = np.random.default_rng(1).standard_normal((3, 28, 28, 1)).astype(np.float32)
    model.forward(x, train=True)
    model.backward(np.ones((3, 10), np.float32))                 # stops before the deskew
    assert np.abs(model.grad).sum() > 0
    model.forward(x, train=True)
    with pytest.raises(RuntimeError, match="deskew.*no input gradient"):
        model.backward(np.ones((3, 10), np.float32), input_grad=True)


def test_deskew_after_a_convolution_is_a_spec_error():
    with pytest.raises(ValueError, match=r"layer 1 \(deskew\): needs single-channel images"):
        Model([{"type": "conv", "out": 4, "kernel": 3}, {"type": "deskew"}])
    with pytest.raises(ValueError, match=r"layer 0 \(deskew\): unknown key 'angle' "
                                         r"\(known: before_augment\)"):
        Model([{"type": "deskew", "angle": 3}])
    with pytest.raises(ValueError, match=r"layer 0 \(deskew\): 'before_augment' must be true "
                                         r"or false, got 1"):
        Model([{"type": "deskew", "before_augment": 1}])
    with pytest.raises(ValueError, match=r"layer 1 \(deskew\): before_augment deskews the raw "
                                         r"images, so the layer must come first"):
        Model([{"type": "conv", "out": 1, "kernel": 1}, {"type": "deskew", "before_augment": True}])


def training_batch(preset: str, mnist_h5):
    """The first training batch of a preset, as dist.train builds it, and its raw images."""
    cfg = load_config(preset)
    shard = read_epoch_shard(mnist_h5, cfg.train.seed, 0, 0, 1, cfg.train.batch_size)
    x, _, _ = local_batch(cfg, shard, 0, epoch=0)
    return cfg, x, shard.images[:cfg.train.batch_size], shard.indices[:cfg.train.batch_size]


def test_before_augment_deskews_the_raw_images_and_then_augments_them(mnist_h5):
    cfg, x, raw, indices = training_batch("best-deskew-raw", mnist_h5)
    keys = sample_keys(cfg.train.seed, 0, indices)
    d = cfg.data
    expected = normalize(random_affine(deskew_raw(raw), keys, d.max_shift, d.max_rotate,
                                       d.max_scale))
    assert np.array_equal(x, expected)
    # The layer passes the training batch through and deskews at evaluation.
    model = Model(cfg.model.layers[:1] + [{"type": "flatten"}])
    assert np.array_equal(model.forward(x, train=True).reshape(x.shape), x)
    assert not np.array_equal(model.forward(x, train=False).reshape(x.shape), x)


def test_before_augment_keeps_the_augmented_shift_that_the_plain_layer_undoes(mnist_h5):
    """What the first convolution sees in training: with the plain deskew layer every digit is
    centred again (the ±2 px shift is gone); deskewed before augmenting, the shift survives."""
    def centres(preset):
        cfg, x, _, _ = training_batch(preset, mnist_h5)
        seen = Model(cfg.model.layers[:1] + [{"type": "flatten"}]).forward(x, train=True)
        cy, cx, _ = moments(seen.reshape(x.shape[:3]))
        return np.concatenate([cy, cx]) - 13.5
    assert np.abs(centres("best-deskew")).max() < 0.3
    assert centres("best-deskew-raw").std() > 0.8          # uniform in ±2 px: sd 1.15


def test_bilinear_fill_is_per_image():
    img = np.ones((2, 4, 4), np.float32)
    far = np.full((2, 4, 4), 50.0, np.float32)                   # far outside every image
    out = bilinear(img, far.copy(), far.copy(), fill=np.array([-3.0, 9.0]))
    assert np.allclose(out[0], -3.0, atol=0.02) and np.allclose(out[1], 9.0, atol=0.02)
