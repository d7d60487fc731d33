"""Data augmentation: a random affine map (rotation, scale, shift) per training image.

Each image gets its own rotation angle, scale factor and shift, drawn from counter-based random
numbers keyed by (seed, epoch, global sample index) (``core.keyed_random``), so an image is
distorted the same way whichever rank holds it: augmentation keeps world-size invariance and
exact resume.

The map is applied backwards, as image warping is usually done: for every *output* pixel p we
ask where it came from in the input, ``q = A^-1 (p - c - t) + c`` (c the image centre, A
rotation times scale, t the shift), and read the input there with bilinear interpolation
(zero outside the image; core/resample.py). Everything is vectorised over the batch and the
28x28 pixels.

    python -m data.augment            # prints how much augmentation changes pixel statistics
Tested by tests/test_data_augment.py.
"""
from __future__ import annotations

import numpy as np

from core import resample
from core.keyed_random import keyed_uniform

AUGMENT_STREAM = 1000  # far from the dropout streams (a dropout layer's index in the model)


def draw_params(keys: np.ndarray, max_shift: float, max_rotate: float, max_scale: float):
    """Per-sample (angle in radians, scale, shift_x, shift_y), each uniform in its range."""
    u = 2.0 * keyed_uniform(keys, AUGMENT_STREAM, (4,)).astype(np.float64) - 1.0  # (B, 4) in [-1, 1)
    angle = np.deg2rad(max_rotate) * u[:, 0]
    scale = 1.0 + max_scale * u[:, 1]
    return angle, scale, max_shift * u[:, 2], max_shift * u[:, 3]


def random_affine(images: np.ndarray, keys: np.ndarray, max_shift: float = 2.0,
                  max_rotate: float = 10.0, max_scale: float = 0.1) -> np.ndarray:
    """uint8 (B, H, W) -> uint8 (B, H, W), each image rotated, scaled and shifted."""
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
    src_x = cos * dx + sin * dy                                         # (B, H, W)
    src_x += f32(cx)
    src_y = cos * dy - sin * dx
    src_y += f32(cy)
    return bilinear(images, src_y, src_x)


def bilinear(images: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """Sample uint8 images (B, H, W) at real-valued positions (B, H, W) float32, zero outside
    (core.resample.bilinear), rounded back to uint8. Overwrites src_y and src_x."""
    return resample.to_uint8(resample.bilinear(images, src_y, src_x))


if __name__ == "__main__":
    from core.keyed_random import sample_keys
    rng = np.random.default_rng(0)
    imgs = np.zeros((256, 28, 28), np.uint8)
    imgs[:, 8:20, 10:18] = rng.integers(128, 256, size=(256, 12, 8))
    out = random_affine(imgs, sample_keys(0, 0, np.arange(256)))
    print(f"mean {imgs.mean():.2f} -> {out.mean():.2f}, std {imgs.std():.2f} -> {out.std():.2f}, "
          f"changed pixels {np.mean(imgs != out):.1%}")
