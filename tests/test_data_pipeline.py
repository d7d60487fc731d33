"""The input pipeline (data/pipeline.py), step by step and as a whole: resampling, deskewing,
augmentation (affine and elastic, keyed by sample, not by batch), normalisation, and the
paths of training and evaluation that the model spec's deskew entry chooses."""
import numpy as np
import pytest

from core.keyed_random import sample_keys
from core.model import Model
from data.hdf5 import read_arrays
from data.pipeline import (MEAN, STD, bilinear, deskew, draw_params, elastic_field,
                           evaluation_input, gaussian_matrix, moments, normalize, random_affine,
                           to_uint8, training_input, where_to_deskew)
from data.shards import read_epoch_shard
from dist.config import load_config


# -- resampling ---------------------------------------------------------------------------------
def test_bilinear_resampling_at_shifted_grid_is_a_shift():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 28, 28)).astype(np.uint8)
    ys, xs = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")
    src_y = np.array(np.broadcast_to(ys - 2, (2, 28, 28)), dtype=np.float32)
    src_x = np.array(np.broadcast_to(xs + 3, (2, 28, 28)), dtype=np.float32)
    shifted = to_uint8(bilinear(img, src_y, src_x))  # overwrites src_y, src_x
    expected = np.zeros_like(img)
    expected[:, 2:, :25] = img[:, :26, 3:]
    assert (shifted == expected).all()


def test_bilinear_fill_is_per_image():
    img = np.ones((2, 4, 4), np.float32)
    far = np.full((2, 4, 4), 50.0, np.float32)                   # far outside every image
    out = bilinear(img, far.copy(), far.copy(), fill=np.array([-3.0, 9.0]))
    assert np.allclose(out[0], -3.0, atol=0.02) and np.allclose(out[1], 9.0, atol=0.02)

# -- augmentation: the affine map ---------------------------------------------------------------
def test_zero_ranges_are_the_identity():
    img = np.random.default_rng(1).integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    out = random_affine(img, sample_keys(0, 0, np.arange(5)), 0.0, 0.0, 0.0)
    assert (out == img).all()


def test_parameters_stay_in_range_and_depend_on_the_sample_only():
    keys = sample_keys(3, 1, np.arange(2000))
    angle, scale, tx, ty = draw_params(keys, 2.0, 10.0, 0.1)
    assert np.abs(np.rad2deg(angle)).max() <= 10 and np.abs(scale - 1).max() <= 0.1
    assert np.abs(tx).max() <= 2 and np.abs(ty).max() <= 2
    assert np.rad2deg(angle).std() > 5  # spread over the range, not stuck
    img = np.random.default_rng(2).integers(0, 256, size=(6, 28, 28)).astype(np.uint8)
    idx = np.array([10, 11, 12, 13, 14, 15])
    whole = random_affine(img, sample_keys(0, 4, idx))
    part = random_affine(img[3:], sample_keys(0, 4, idx[3:]))  # another "rank"
    assert (whole[3:] == part).all()
    assert not (random_affine(img, sample_keys(0, 5, idx)) == whole).all()  # next epoch differs


def centred(images):
    """Roll each image so its centre of mass sits at the centre (whole pixels)."""
    grid = np.arange(28.0)
    mass = images.sum(axis=(1, 2)) + 1e-9
    cy = (images.sum(axis=2) @ grid) / mass
    cx = (images.sum(axis=1) @ grid) / mass
    return np.stack([np.roll(img, (int(round(13.5 - y)), int(round(13.5 - x))), axis=(0, 1))
                     for img, y, x in zip(images, cy, cx)]) / 255.0


def test_real_digits_keep_statistics_and_labels(mnist_h5):
    images, labels = read_arrays(mnist_h5, "train")
    images, labels = images[:3000], labels[:3000].astype(int)
    out = random_affine(images, sample_keys(0, 0, np.arange(3000)), 2.0, 12.0, 0.1)
    assert abs(out.mean() - images.mean()) < 0.05 * images.mean()
    assert abs(out.std() - images.std()) < 0.10 * images.std()  # bilinear blurs a little
    # Labels survive: a nearest-class-mean classifier (fitted on raw digits) is about as
    # accurate on augmented digits as on raw ones; a label-destroying warp would drop it.
    # Digits are first centred by their centre of mass, so that a shift alone costs nothing.
    x, xa = centred(images).reshape(3000, -1), centred(out).reshape(3000, -1)
    means = np.stack([x[labels == d].mean(axis=0) for d in range(10)])
    def accuracy(z):
        dist = ((z[:, None, :] - means[None]) ** 2).sum(axis=2)
        return (dist.argmin(axis=1) == labels).mean()
    raw, augmented = accuracy(x), accuracy(xa)
    assert raw > 0.75 and augmented > raw - 0.08, (raw, augmented)


def test_a_batch_split_over_ranks_is_augmented_as_one_batch():
    # World-size invariance: rank r of n augments samples r::n of the global batch; the
    # result must not depend on which other samples share the call.
    images = np.random.default_rng(3).integers(0, 256, size=(62, 28, 28)).astype(np.uint8)
    keys = sample_keys(0, 1, np.arange(100, 162))
    whole = random_affine(images, keys)
    for ranks in (2, 4):
        split = np.empty_like(whole)
        for r in range(ranks):
            split[r::ranks] = random_affine(images[r::ranks], keys[r::ranks])
        assert np.array_equal(whole, split)


# -- elastic distortion -------------------------------------------------------------------------
def test_elastic_off_is_the_affine_path_bitwise():
    img = np.random.default_rng(4).integers(0, 256, size=(9, 28, 28)).astype(np.uint8)
    keys = sample_keys(0, 2, np.arange(9))
    affine = random_affine(img, keys, 2.0, 10.0, 0.1)
    assert np.array_equal(random_affine(img, keys, 2.0, 10.0, 0.1, 0.0, 4.0), affine)
    assert np.array_equal(random_affine(img, keys, 2.0, 10.0, 0.1, elastic_alpha=0.0), affine)
    assert not np.array_equal(random_affine(img, keys, 2.0, 10.0, 0.1, 34.0, 4.0), affine)


def test_elastic_composes_with_the_affine_map_in_one_pass():
    # With the affine ranges at zero only the displacement is left: the output reads the input
    # at p + d(p). Built by hand from elastic_field and one bilinear resampling (equal up to
    # the rounding of the positions, which the affine path takes through the image centre).
    img = np.random.default_rng(5).integers(0, 256, size=(7, 28, 28)).astype(np.uint8)
    keys = sample_keys(1, 0, np.arange(7))
    dy, dx = elastic_field(keys, (28, 28), 20.0, 3.0)
    ys, xs = np.meshgrid(np.arange(28, dtype=np.float32), np.arange(28, dtype=np.float32),
                         indexing="ij")
    by_hand = to_uint8(bilinear(img, ys + dy, xs + dx))
    out = random_affine(img, keys, 0.0, 0.0, 0.0, 20.0, 3.0).astype(int)
    assert np.abs(out - by_hand).max() <= 1 and np.mean(out == by_hand) > 0.99
    assert np.mean(out == img) < 0.5   # the displacement moved most pixels


@pytest.mark.parametrize("sigma", [2.0, 6.0])
def test_elastic_field_magnitude_and_smoothness_follow_alpha_and_sigma(sigma):
    """d = alpha * G U with U uniform in [-1, 1) (variance 1/3) and G the zero-padded Gaussian
    smoothing: pixel (i, j) has variance alpha^2 / 3 * |G_i|^2 |G_j|^2 (G_i a row of the
    matrix), and neighbours k px apart correlate as <G_j, G_j+k> / (|G_j| |G_j+k|), which is
    exp(-k^2 / (4 sigma^2)) away from the border. Checked on 6000 drawn fields."""
    alpha, n = 30.0, 6000
    dy, dx = elastic_field(sample_keys(7, 3, np.arange(n)), (28, 28), alpha, sigma)
    g = gaussian_matrix(28, sigma).astype(np.float64)
    row = np.sqrt((g ** 2).sum(axis=1))                                    # |G_i|
    expected_sd = alpha / np.sqrt(3.0) * row[:, None] * row[None, :]       # (28, 28)
    for field in (dy, dx):
        assert np.abs(field.mean(axis=0)).max() < 0.1 * expected_sd.min()  # centred at 0
        assert np.allclose(field.std(axis=0), expected_sd, rtol=0.06)
    # Smoothness along x at the centre row, lags 1 and 3 px: measured against the exact
    # correlation of the matrix and against the ideal Gaussian's.
    j = 12
    for lag in (1, 3):
        measured = np.corrcoef(dx[:, 14, j], dx[:, 14, j + lag])[0, 1]
        exact = g[j] @ g[j + lag] / (row[j] * row[j + lag])
        assert abs(measured - exact) < 0.04, (lag, measured, exact)
        if sigma <= 3:   # the border is far enough away for the ideal formula
            assert abs(exact - np.exp(-lag ** 2 / (4 * sigma ** 2))) < 0.02
    assert abs(np.corrcoef(dy[:, 14, 14], dx[:, 14, 14])[0, 1]) < 0.05   # y and x independent
    # Twice alpha, twice the displacement, same field.
    dy2, _ = elastic_field(sample_keys(7, 3, np.arange(n)), (28, 28), 2 * alpha, sigma)
    assert np.allclose(dy2, 2 * dy, rtol=1e-6, atol=1e-6)


def test_elastic_is_keyed_by_sample_not_by_batch():
    # World-size invariance: rank r of n distorts samples r::n of the global batch; bitwise
    # the same images as the whole batch in one call, and another epoch distorts differently.
    images = np.random.default_rng(6).integers(0, 256, size=(62, 28, 28)).astype(np.uint8)
    keys = sample_keys(0, 1, np.arange(100, 162))
    whole = random_affine(images, keys, 2.0, 10.0, 0.1, 34.0, 4.0)
    for ranks in (2, 4):
        split = np.empty_like(whole)
        for r in range(ranks):
            split[r::ranks] = random_affine(images[r::ranks], keys[r::ranks], 2.0, 10.0, 0.1,
                                            34.0, 4.0)
        assert np.array_equal(whole, split)
    other_epoch = random_affine(images, sample_keys(0, 2, np.arange(100, 162)), 2.0, 10.0, 0.1,
                                34.0, 4.0)
    assert not np.array_equal(other_epoch, whole)


def test_elastic_real_digits_keep_statistics_mass_and_labels(mnist_h5):
    images, labels = read_arrays(mnist_h5, "train")
    images, labels = images[:3000], labels[:3000].astype(int)
    keys = sample_keys(0, 0, np.arange(3000))
    out = random_affine(images, keys, 2.0, 10.0, 0.1, 34.0, 4.0)   # Simard's alpha and sigma
    assert abs(out.mean() - images.mean()) < 0.05 * images.mean()
    assert abs(out.std() - images.std()) < 0.10 * images.std()
    mass = out.reshape(3000, -1).sum(1) / images.reshape(3000, -1).astype(float).sum(1)
    assert 0.9 < np.median(mass) < 1.1 and np.percentile(mass, 5) > 0.7   # ink is kept
    changed = np.mean(out != random_affine(images, keys, 2.0, 10.0, 0.1))
    assert changed > 0.05   # and the distortion did something beyond the affine map
    # Labels: the nearest-class-mean check of the affine test. It compares pixels with class
    # templates, so bent strokes cost it more than they cost a convolutional net; the bounds
    # are wider than for the affine warp alone, and a far too strong distortion (alpha 100)
    # must fall to near chance, so that the check can tell a kept label from a lost one.
    x = centred(images).reshape(3000, -1)
    means = np.stack([x[labels == d].mean(axis=0) for d in range(10)])
    def accuracy(z):
        z = centred(z).reshape(len(z), -1)
        return (((z[:, None, :] - means[None]) ** 2).sum(axis=2).argmin(axis=1) == labels).mean()
    raw, simard = accuracy(images), accuracy(out)
    ciresan = accuracy(random_affine(images, keys, 2.0, 10.0, 0.1, 36.0, 6.0))
    destroyed = accuracy(random_affine(images, keys, 0.0, 0.0, 0.0, 100.0, 4.0))
    assert raw > 0.75 and simard > raw - 0.25 and ciresan > raw - 0.12, (raw, simard, ciresan)
    assert destroyed < 0.35 < simard, (destroyed, simard)

# -- deskewing ----------------------------------------------------------------------------------
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


# -- normalisation ------------------------------------------------------------------------------
def test_normalize():
    x = normalize(np.array([[[0, 255]]], dtype=np.uint8))
    assert x.dtype == np.float32 and x.shape == (1, 1, 2, 1)
    np.testing.assert_allclose(x.ravel(), [-MEAN / STD, (1 - MEAN) / STD], rtol=1e-6)


# -- the whole path: the spec's deskew entry ----------------------------------------------------
def test_where_to_deskew_reads_the_first_entry_of_the_spec_as_written_or_normalized():
    dense = {"type": "dense", "out": 10}
    assert where_to_deskew([{"type": "flatten"}, dense]) is None
    assert where_to_deskew([{"type": "deskew"}, {"type": "flatten"}]) == "input"
    assert where_to_deskew([{"type": "deskew", "before_augment": False}]) == "input"
    assert where_to_deskew([{"type": "deskew", "before_augment": True}]) == "raw"
    assert where_to_deskew(load_config("best-deskew").model.layers) == "input"
    assert where_to_deskew(load_config("best-deskew-raw").model.layers) == "raw"
    assert where_to_deskew(load_config("fast-5min-deskew").model.layers) == "input"
    assert where_to_deskew(load_config("best").model.layers) is None


def training_batch(preset: str, mnist_h5, *overrides):
    """The first training batch of a preset as dist.train's local_batch builds it, with its raw
    images and keys."""
    cfg = load_config(preset, overrides=list(overrides))
    b = cfg.train.batch_size
    shard = read_epoch_shard(mnist_h5, cfg.train.seed, 0, 0, 1, b)
    keys = sample_keys(cfg.train.seed, 0, shard.indices[:b])
    raw = shard.images[:b]
    return cfg, training_input(raw, keys, cfg.model.layers, cfg.data), raw, keys


ELASTIC = ("data.elastic_alpha=34", "data.elastic_sigma=4")


def test_before_augment_deskews_the_raw_images_and_then_augments_them(mnist_h5):
    cfg, x, raw, keys = training_batch("best-deskew-raw", mnist_h5, *ELASTIC)
    d = cfg.data
    expected = normalize(random_affine(to_uint8(deskew(raw)), keys, d.max_shift, d.max_rotate,
                                       d.max_scale, 34.0, 4.0))
    assert np.array_equal(x, expected)


def test_the_plain_entry_deskews_the_augmented_network_input(mnist_h5):
    cfg, x, raw, keys = training_batch("best-deskew", mnist_h5, *ELASTIC)
    d = cfg.data
    augmented = normalize(random_affine(raw, keys, d.max_shift, d.max_rotate, d.max_scale,
                                        34.0, 4.0))
    assert np.array_equal(x, deskew(augmented[..., 0])[..., None])
    _, plain, _, _ = training_batch("best", mnist_h5, *ELASTIC)     # no deskew entry
    assert np.array_equal(plain, augmented)


def test_before_augment_keeps_the_augmented_shift_that_the_plain_entry_undoes(mnist_h5):
    """What the first convolution sees in training: deskewed after augmentation every digit is
    centred again (the +-2 px shift is gone); deskewed before augmenting, the shift survives."""
    def centres(preset):
        _, x, _, _ = training_batch(preset, mnist_h5)
        cy, cx, _ = moments(x[..., 0])
        return np.concatenate([cy, cx]) - 13.5
    assert np.abs(centres("best-deskew")).max() < 0.3
    assert centres("best-deskew-raw").std() > 0.8          # uniform in +-2 px: sd 1.15


def test_evaluation_deskews_for_either_entry_and_acts_on_normalised_floats(mnist_h5):
    """Normalised floats (background below zero) are deskewed as raw pixels are."""
    images = read_arrays(mnist_h5, "test")[0][:8]
    plain = evaluation_input(images, [{"type": "deskew"}])
    assert np.array_equal(evaluation_input(images, [{"type": "deskew", "before_augment": True}]),
                          plain)
    from_raw = normalize(deskew(images.astype(np.float32)).clip(0, 255))
    assert np.abs(plain - from_raw).max() < 1e-3
    assert np.array_equal(evaluation_input(images, [{"type": "flatten"}]), normalize(images))


def test_predict_scores_feeds_the_model_through_the_pipeline(mnist_h5):
    from dist.evaluate import predict_scores
    images = read_arrays(mnist_h5, "test")[0][:20]
    model = Model([{"type": "deskew"}, {"type": "flatten"}, {"type": "dense", "out": 10}], seed=3)
    expected = model.forward(evaluation_input(images, model.spec), train=False)
    assert np.array_equal(predict_scores(model, images, threads=1), expected)
    assert not np.array_equal(expected, model.forward(normalize(images), train=False))


def test_the_deskew_entry_is_the_identity_in_the_model_and_trains_like_any_spec():
    spec = [{"type": "deskew"}, {"type": "conv", "out": 4, "kernel": 3}, {"type": "relu"},
            {"type": "flatten"}, {"type": "dense", "out": 10}]
    model = Model(spec, seed=0)
    assert model.layers[0].param_shapes == {} and model.layers[1].index == 1
    x = np.random.default_rng(1).standard_normal((3, 28, 28, 1)).astype(np.float32)
    for train in (True, False):
        assert np.array_equal(model.layers[0].forward(x, train), x)
    model.forward(x, train=True)
    dx = model.backward(np.ones((3, 10), np.float32), input_grad=True)
    assert dx.shape == x.shape and np.abs(model.grad).sum() > 0


def test_a_misplaced_or_misspelt_deskew_entry_is_a_spec_error():
    with pytest.raises(ValueError, match=r"layer 1 \(deskew\): deskewing prepares the input "
                                         r"images, so it must come first"):
        Model([{"type": "conv", "out": 4, "kernel": 3}, {"type": "deskew"}])
    with pytest.raises(ValueError, match=r"layer 1 \(deskew\): .* must come first"):
        Model([{"type": "conv", "out": 1, "kernel": 1}, {"type": "deskew", "before_augment": True}])
    with pytest.raises(ValueError, match=r"layer 0 \(deskew\): unknown key 'angle' "
                                         r"\(known: before_augment\)"):
        Model([{"type": "deskew", "angle": 3}])
    with pytest.raises(ValueError, match=r"layer 0 \(deskew\): 'before_augment' must be true "
                                         r"or false, got 1"):
        Model([{"type": "deskew", "before_augment": 1}])
    with pytest.raises(ValueError, match=r"layer 0 \(deskew\): needs single-channel images"):
        Model([{"type": "deskew"}, {"type": "flatten"}], input_shape=(28, 28, 3))


def test_shifted_moves_whole_pixels_and_fills_with_background():
    from data.pipeline import shifted
    images = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5) + 1
    down_left = shifted(images, 1, -1)
    np.testing.assert_array_equal(down_left[:, 1:, :-1], images[:, :-1, 1:])
    assert (down_left[:, 0, :] == 0).all() and (down_left[:, :, -1] == 0).all()
    np.testing.assert_array_equal(shifted(images, 0, 0), images)
