"""Data augmentation: a random affine map (rotation, scale, shift) per training image.

Each image gets its own rotation angle, scale factor and shift, drawn from counter-based random
numbers keyed by (seed, epoch, global sample index) (``core.keyed_random``), so an image is
distorted the same way whichever rank holds it: augmentation keeps world-size invariance and
exact resume.

The map is applied backwards, as image warping is usually done: for every *output* pixel p we
ask where it came from in the input, ``q = A^-1 (p - c - t) + c`` (c the image centre, A
rotation times scale, t the shift), and read the input there with bilinear interpolation
(zero outside the image). Everything is vectorised over the batch and the 28x28 pixels.

    python -m data.augment            # prints how much augmentation changes pixel statistics
Tested by tests/test_data_augment.py.
"""
from __future__ import annotations

import numpy as np

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
    angle, scale, tx, ty = draw_params(keys, max_shift, max_rotate, max_scale)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64) - cy,
                         np.arange(w, dtype=np.float64) - cx, indexing="ij")  # (H, W)
    # Inverse map: undo the shift, then rotate by -angle and divide by the scale.
    cos, sin = (np.cos(angle) / scale)[:, None, None], (np.sin(angle) / scale)[:, None, None]
    dy, dx = ys[None] - ty[:, None, None], xs[None] - tx[:, None, None]      # (B, H, W)
    src_x = cos * dx + sin * dy + cx
    src_y = -sin * dx + cos * dy + cy
    return bilinear(images, src_y, src_x)


def bilinear(images: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """Sample each image at real-valued positions (B, H, W); zero outside. Returns uint8."""
    b, h, w = images.shape
    padded = np.zeros((b, h + 2, w + 2), dtype=np.float32)   # a zero frame: outside = 0
    padded[:, 1:-1, 1:-1] = images
    # Clip into the frame so out-of-range positions read zeros, then split integer/fraction.
    y = np.clip(src_y + 1, 0, h + 0.999)
    x = np.clip(src_x + 1, 0, w + 0.999)
    y0, x0 = np.floor(y).astype(np.intp), np.floor(x).astype(np.intp)
    fy, fx = (y - y0).astype(np.float32), (x - x0).astype(np.float32)
    n = np.arange(b)[:, None, None]
    top = padded[n, y0, x0] * (1 - fx) + padded[n, y0, x0 + 1] * fx
    bottom = padded[n, y0 + 1, x0] * (1 - fx) + padded[n, y0 + 1, x0 + 1] * fx
    out = top * (1 - fy) + bottom * fy
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


if __name__ == "__main__":
    from core.keyed_random import sample_keys
    rng = np.random.default_rng(0)
    imgs = np.zeros((256, 28, 28), np.uint8)
    imgs[:, 8:20, 10:18] = rng.integers(128, 256, size=(256, 12, 8))
    out = random_affine(imgs, sample_keys(0, 0, np.arange(256)))
    print(f"mean {imgs.mean():.2f} -> {out.mean():.2f}, std {imgs.std():.2f} -> {out.std():.2f}, "
          f"changed pixels {np.mean(imgs != out):.1%}")
