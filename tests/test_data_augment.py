"""Augmentation keeps labels and image statistics, and is keyed by sample, not by batch."""
import numpy as np
import pytest

from core.keyed_random import sample_keys
from data.augment import bilinear, draw_params, elastic_field, gaussian_matrix, random_affine
from data.hdf5 import read_arrays


def test_bilinear_resampling_at_shifted_grid_is_a_shift():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 28, 28)).astype(np.uint8)
    ys, xs = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")
    src_y = np.array(np.broadcast_to(ys - 2, (2, 28, 28)), dtype=np.float32)
    src_x = np.array(np.broadcast_to(xs + 3, (2, 28, 28)), dtype=np.float32)
    shifted = bilinear(img, src_y, src_x)  # overwrites src_y, src_x
    expected = np.zeros_like(img)
    expected[:, 2:, :25] = img[:, :26, 3:]
    assert (shifted == expected).all()


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
    by_hand = bilinear(img, ys + dy, xs + dx)
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
