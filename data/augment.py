"""Data augmentation: a random affine map (rotation, scale, shift) per training image,
optionally followed by an elastic distortion.

Each image gets its own rotation angle, scale factor and shift, drawn from counter-based random
numbers keyed by (seed, epoch, global sample index) (``core.keyed_random``), so an image is
distorted the same way whichever rank holds it: augmentation keeps world-size invariance and
exact resume.

The map is applied backwards, as image warping is usually done: for every *output* pixel p we
ask where it came from in the input, ``q = A^-1 (p - c - t) + c`` (c the image centre, A
rotation times scale, t the shift), and read the input there with bilinear interpolation
(zero outside the image; core/resample.py). Everything is vectorised over the batch and the
28x28 pixels.

Elastic distortion (Simard, Steinkraus & Platt 2003, "Best practices for convolutional neural
networks applied to visual document analysis"): every pixel of every image gets a random
displacement, uniform in [-1, 1] in y and in x, and the two fields are smoothed by a Gaussian
of width ``sigma`` and scaled by ``alpha``: ``d = alpha * (G_sigma * U)``. A small sigma
leaves noise, a large one a near-rigid shift; in between (sigma 4-6 px on 28x28 digits) the
strokes bend the way handwriting varies. The displacement is added to the output pixel before
the affine map's inverse, ``q = A^-1 (p + d(p) - c - t) + c``: exactly "distort the affinely
warped image", in one resampling pass instead of two (one interpolation blurs less than two).
Its uniforms come from the same per-sample keys as the affine parameters, on a stream of their
own (ELASTIC_STREAM), so the distortion is world-size invariant too.

    python -m data.augment            # prints how much augmentation changes pixel statistics,
                                      # and times affine against affine + elastic (A/B)
Tested by tests/test_data_augment.py.
"""
from __future__ import annotations

import numpy as np

from core import resample
from core.keyed_random import keyed_uniform

AUGMENT_STREAM = 1000  # far from the dropout streams (a dropout layer's index in the model)
ELASTIC_STREAM = 1001  # the elastic displacement fields' uniforms


def draw_params(keys: np.ndarray, max_shift: float, max_rotate: float, max_scale: float):
    """Per-sample (angle in radians, scale, shift_x, shift_y), each uniform in its range."""
    u = 2.0 * keyed_uniform(keys, AUGMENT_STREAM, (4,)).astype(np.float64) - 1.0  # (B, 4) in [-1, 1)
    angle = np.deg2rad(max_rotate) * u[:, 0]
    scale = 1.0 + max_scale * u[:, 1]
    return angle, scale, max_shift * u[:, 2], max_shift * u[:, 3]


def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """float32 (size, size) M with (M @ v)[i] = sum_j g(i - j) v[j]: one axis of a Gaussian
    smoothing with zero padding (the field is 0 outside the image), as a matrix. g is the
    normalised Gaussian of width sigma, cut at 4 sigma (scipy.ndimage's default)."""
    radius = max(int(np.ceil(4.0 * sigma)), 1)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()                                               # (2r + 1,)
    offset = np.arange(size)[:, None] - np.arange(size)[None, :]     # i - j
    inside = np.abs(offset) <= radius
    return np.where(inside, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0).astype(np.float32)


def elastic_field(keys: np.ndarray, shape: tuple[int, int], alpha: float, sigma: float):
    """Per-sample displacement fields (dy, dx), float32 (B, H, W) each, in pixels:
    alpha * (G_sigma * U) with U uniform in [-1, 1) per pixel and direction.

    The smoothing is separable: G_H @ U @ G_W^T for each image and direction, a batch of small
    matrix products. numpy's matmul runs one BLAS call per image of the stack, so an image's
    field does not depend on the batch it is in (tested)."""
    h, w = shape
    u = keyed_uniform(keys, ELASTIC_STREAM, (2, h, w))               # (B, 2, H, W) in [0, 1)
    u *= np.float32(2.0)
    u -= np.float32(1.0)
    field = gaussian_matrix(h, sigma) @ u @ gaussian_matrix(w, sigma).T   # (B, 2, H, W)
    field *= np.float32(alpha)
    return field[:, 0], field[:, 1]


def random_affine(images: np.ndarray, keys: np.ndarray, max_shift: float = 2.0,
                  max_rotate: float = 10.0, max_scale: float = 0.1,
                  elastic_alpha: float = 0.0, elastic_sigma: float = 0.0) -> np.ndarray:
    """uint8 (B, H, W) -> uint8 (B, H, W), each image rotated, scaled and shifted, and
    elastically distorted if elastic_alpha > 0 (one resampling for both)."""
    b, h, w = images.shape
    angle, scale, tx, ty = draw_params(keys, max_shift, max_rotate, max_scale)   # (B,) each
    f32 = np.float32   # float32 positions: 1e-5 px error, and half the memory traffic
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ys = (np.arange(h, dtype=f32) - f32(cy))[None, :, None]             # (1, H, 1)
    xs = (np.arange(w, dtype=f32) - f32(cx))[None, None, :]             # (1, 1, W)
    # Inverse map: undo the shift, then rotate by -angle and divide by the scale.
    cos = (np.cos(angle) / scale).astype(f32)[:, None, None]            # (B, 1, 1)
    sin = (np.sin(angle) / scale).astype(f32)[:, None, None]
    dy = ys - ty.astype(f32)[:, None, None]                             # (B, H, 1)
    dx = xs - tx.astype(f32)[:, None, None]                             # (B, 1, W)
    if elastic_alpha > 0:   # p + d(p): the elastic displacement, before the inverse map
        field_y, field_x = elastic_field(keys, (h, w), elastic_alpha, elastic_sigma)
        dy = dy + field_y                                               # (B, H, W)
        dx = dx + field_x
    src_x = cos * dx + sin * dy                                         # (B, H, W)
    src_x += f32(cx)
    src_y = cos * dy - sin * dx
    src_y += f32(cy)
    return bilinear(images, src_y, src_x)


def bilinear(images: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """Sample uint8 images (B, H, W) at real-valued positions (B, H, W) float32, zero outside
    (core.resample.bilinear), rounded back to uint8. Overwrites src_y and src_x."""
    return resample.to_uint8(resample.bilinear(images, src_y, src_x))


def _time_elastic(repeats: int = 30, rounds: int = 5) -> None:
    """Interleaved A/B: the same batch warped by the affine map alone and by affine + elastic,
    alternating, best of `rounds` per batch size (this machine is shared: the minimum is the
    least disturbed)."""
    import time
    from core.keyed_random import sample_keys
    rng = np.random.default_rng(1)
    for b in (64, 128):       # a rank's share at mpirun -n 2, and the whole global batch
        imgs = rng.integers(0, 256, size=(b, 28, 28)).astype(np.uint8)
        keys = sample_keys(0, 0, np.arange(b))
        best = {"affine": np.inf, "elastic": np.inf}
        for _ in range(rounds):
            for name, elastic in (("affine", (0.0, 0.0)), ("elastic", (34.0, 4.0))):
                t = time.perf_counter()
                for _ in range(repeats):
                    random_affine(imgs, keys, 2.0, 10.0, 0.1, *elastic)
                best[name] = min(best[name], (time.perf_counter() - t) / repeats)
        print(f"batch {b}: affine {1e3 * best['affine']:.2f} ms, affine + elastic "
              f"{1e3 * best['elastic']:.2f} ms (+{1e3 * (best['elastic'] - best['affine']):.2f} "
              f"ms, {best['elastic'] / best['affine']:.2f}x)")


if __name__ == "__main__":
    from core.keyed_random import sample_keys
    rng = np.random.default_rng(0)
    imgs = np.zeros((256, 28, 28), np.uint8)
    imgs[:, 8:20, 10:18] = rng.integers(128, 256, size=(256, 12, 8))
    keys = sample_keys(0, 0, np.arange(256))
    for name, elastic in (("affine", (0.0, 0.0)), ("affine + elastic 34/4", (34.0, 4.0))):
        out = random_affine(imgs, keys, 2.0, 10.0, 0.1, *elastic)
        print(f"{name}: mean {imgs.mean():.2f} -> {out.mean():.2f}, std {imgs.std():.2f} -> "
              f"{out.std():.2f}, changed pixels {np.mean(imgs != out):.1%}")
    _time_elastic()
