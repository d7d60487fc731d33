"""Augmentation keeps labels and image statistics, and is keyed by sample, not by batch."""
import numpy as np

from core.keyed_random import sample_keys
from data.augment import bilinear, draw_params, random_affine
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
