"""Bilinear resampling of a batch of images at real-valued positions.

Shared by the two places that warp images: random affine augmentation (data/augment.py, on
uint8 training images) and the deskew input layer (core/deskew.py, on normalised floats).
Both compute, for every *output* pixel, where it comes from in the input, and read the input
there: the four neighbours, weighted by the fractional parts of the position.

    python -m core.resample      # checks that a whole-pixel shift is an exact shift
Tested by tests/test_data_augment.py and tests/test_core_deskew.py.
"""
import numpy as np


def bilinear(images: np.ndarray, src_y: np.ndarray, src_x: np.ndarray,
             fill: np.ndarray | None = None) -> np.ndarray:
    """Sample each image (B, H, W) at positions src_y, src_x (B, H, W) float32; positions
    outside the image read `fill` (B,), one value per image (default 0). Returns float32
    (B, H, W). Overwrites src_y and src_x.

    The four neighbours of every position are read with one ``take`` each from the flattened,
    framed batch (a flat index is much cheaper than indexing with three index arrays), and
    the arithmetic is in place on float32: this runs once per training image per epoch."""
    b, h, w = images.shape
    hp, wp = h + 2, w + 2
    padded = np.zeros((b, hp, wp), dtype=np.float32)   # a one-pixel frame: outside = fill
    if fill is not None:
        padded += np.asarray(fill, np.float32)[:, None, None]
    padded[:, 1:-1, 1:-1] = images
    # Shift into the frame and clip to it, so out-of-range positions read the frame.
    for pos, size in ((src_y, h), (src_x, w)):
        pos += 1
        np.maximum(pos, 0, out=pos)
        np.minimum(pos, size + 0.999, out=pos)
    y0, x0 = np.floor(src_y), np.floor(src_x)
    fy, fx = src_y - y0, src_x - x0                       # fractions in [0, 1), float32
    corner = y0.astype(np.intp) * wp                      # flat index of the top-left neighbour
    corner += x0.astype(np.intp)
    corner += (np.arange(b) * (hp * wp))[:, None, None]
    flat = padded.ravel()
    # mode="clip": the indices are in range by construction, and skipping take's bounds
    # check (mode="raise") makes it twice as fast.
    top, top_right = flat.take(corner, mode="clip"), flat.take(corner + 1, mode="clip")
    bottom = flat.take(corner + wp, mode="clip")
    bottom_right = flat.take(corner + (wp + 1), mode="clip")
    top_right -= top                                      # top += fx * (top_right - top)
    top_right *= fx
    top += top_right
    bottom_right -= bottom
    bottom_right *= fx
    bottom += bottom_right
    bottom -= top                                         # out = top + fy * (bottom - top)
    bottom *= fy
    top += bottom
    return top


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Resampled float32 pixels rounded back to uint8 (in place on `images`)."""
    np.rint(images, out=images)
    np.clip(images, 0, 255, out=images)
    return images.astype(np.uint8)


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 28, 28)).astype(np.float32)
    ys, xs = np.meshgrid(np.arange(28, dtype=np.float32), np.arange(28, dtype=np.float32),
                         indexing="ij")
    out = bilinear(img, np.broadcast_to(ys - 2, img.shape).copy(),
                   np.broadcast_to(xs + 3, img.shape).copy(), fill=np.array([7.0, -1.0]))
    print("exact shift:", np.array_equal(out[:, 2:, :25], img[:, :26, 3:]),
          "| corners that read outside (fill 7 and -1):", out[0, 0, 0], out[1, 27, 27])
