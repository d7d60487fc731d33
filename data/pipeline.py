"""The input pipeline: a batch of uint8 digits -> the float32 input of the network.

A training batch takes these steps, in this order (`training_input`, called by dist.train's
`local_batch`):

    images   uint8 (b, 28, 28)      this rank's rows of global batch k (data/shards.py)
    keys     uint64 (b,)            sample_keys(seed, epoch, global sample index): every random
                                    number below is a function of its sample's key, never of
                                    the rank (core/keyed_random.py)
    1. deskew the raw images        if the spec starts with {type="deskew", before_augment=true}:
                                    each digit sheared upright, rounded back to uint8
    2. augment                      if data.augment: a random rotation, scale and shift, and an
                                    elastic distortion if data.elastic_alpha > 0, in one
                                    bilinear resampling, rounded back to uint8
    3. normalise                    float32 (b, 28, 28, 1): (x / 255 - MEAN) / STD
    4. deskew the network input     if the spec starts with {type="deskew"}: sheared upright

Evaluation, `launch.predict`, `launch.serve` and ensembles (`evaluation_input`, called by
dist.evaluate's `predict_scores`) do not augment: step 3, then step 4 if the spec starts with a
deskew entry of either kind. So a model sees upright digits at evaluation whichever side of the
augmentation it was deskewed on in training.

Whether and where to deskew is recorded in the model spec (core/deskew.py says why there),
which every checkpoint and model file carries; the layers of the network proper start after it.

Steps 1 and 2 are two resamplings, not one: the shear of step 1 could be folded into the
affine map of step 2, but that would change the training images of `best-deskew-raw`, and a
run's images must stay the same bit for bit from release to release (resume, world-size
invariance). Step 4 acts on float32 pixels, so it rounds nothing.

Try it:

    python -m data.pipeline            # each step on real test digits: what it changes, its time
Tested by tests/test_data_pipeline.py.
"""
from __future__ import annotations

import numpy as np

from core.keyed_random import keyed_uniform

MEAN, STD = 0.1307, 0.3081  # of MNIST training pixels on the 0..1 scale
AUGMENT_STREAM = 1000       # far from the dropout streams (a dropout layer's index in the model)
ELASTIC_STREAM = 1001       # the elastic displacement fields' uniforms
# |alpha| above 1 (a slant of more than 45 degrees) only comes from degenerate images -- a
# blank, or a single horizontal stroke with var_y ~ 0 -- that a shear cannot improve.
MAX_SLANT = 1.0


# --- resampling: read each image at real-valued positions ------------------------------------
#
# Deskewing and augmentation both warp images the way image warping is usually done: for every
# *output* pixel they compute where it comes from in the input and read the input there, the
# four neighbours weighted by the fractional parts of the position (bilinear interpolation).

def bilinear(images: np.ndarray, src_y: np.ndarray, src_x: np.ndarray,
             fill: np.ndarray | None = None) -> np.ndarray:
    """Sample each image (B, H, W) at positions src_y, src_x (B, H, W) float32; positions
    outside the image read `fill` (B,), one value per image (default 0). Returns float32
    (B, H, W). Overwrites src_y and src_x.

    The four neighbours of every position are read with one ``take`` each from the flattened,
    framed batch (one flat index instead of three index arrays), and the arithmetic is in place
    on float32: this runs once per training image per epoch."""
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
    # mode="clip" skips take's bounds check: the indices are in range by construction.
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


# --- deskewing: shear each digit upright (steps 1 and 4) --------------------------------------
#
# People slant their handwriting by different amounts. Deskewing measures each image's slant
# from its second moments and shears it upright, so the network sees one upright digit instead
# of many slants (LeCun et al. 1998 list deskewed inputs for several of their MNIST models;
# Ciresan et al. 2012 averaged networks trained on differently preprocessed inputs, whose errors
# differ, which is what an ensemble needs).
#
# For an image with pixel weights w (intensity above the background), centre of mass (cy, cx)
# and moments  var_y = E[(y - cy)^2],  cov = E[(x - cx)(y - cy)]  (expectations under w), the
# slant is  alpha = cov / var_y : how far x moves per row. Output pixel (r, c), at (ry, rx) from
# the image centre, reads the input at
#
#     y = cy + ry,    x = cx + rx + alpha * ry
#
# (bilinear, the background outside): a shear that makes cov = 0 and moves the centre of mass
# to the image centre. Each image is deskewed on its own, so deskewing keeps world-size
# invariance.

def moments(images: np.ndarray, background: np.ndarray | None = None):
    """Centre of mass (cy, cx) and slant alpha of each image (B, H, W), in float64.
    The background (B,) (default: each image's minimum) has weight 0. Returns three (B,)
    arrays."""
    _, h, w = images.shape
    if background is None:
        background = images.min(axis=(1, 2))
    weight = images.astype(np.float64) - background[:, None, None]                # (B, H, W)
    row_mass, col_mass = weight.sum(axis=2), weight.sum(axis=1)                    # (B, H), (B, W)
    mass = np.maximum(row_mass.sum(axis=1), 1e-12)                                 # (B,)
    cy = row_mass @ np.arange(h) / mass
    cx = col_mass @ np.arange(w) / mass
    dy = np.arange(h) - cy[:, None]                                                # (B, H)
    dx = np.arange(w) - cx[:, None]                                                # (B, W)
    var_y = (row_mass * dy ** 2).sum(axis=1) / mass
    cov = np.einsum("bhw,bh,bw->b", weight, dy, dx) / mass
    alpha = np.where(var_y > 1e-6, cov / np.maximum(var_y, 1e-6), 0.0)
    return cy, cx, np.clip(alpha, -MAX_SLANT, MAX_SLANT)


def deskew(images: np.ndarray) -> np.ndarray:
    """Images (B, H, W), uint8 or float -> float32 (B, H, W), each sheared upright and
    centred; what lies outside reads each image's minimum (its background)."""
    b, h, w = images.shape
    background = images.min(axis=(1, 2))        # (B,): weight 0, and what fills in outside
    cy, cx, alpha = moments(images, background)
    ry = np.arange(h, dtype=np.float64)[None, :, None] - (h - 1) / 2.0    # (1, H, 1)
    rx = np.arange(w, dtype=np.float64)[None, None, :] - (w - 1) / 2.0    # (1, 1, W)
    src_y = np.broadcast_to(cy[:, None, None] + ry, (b, h, w)).astype(np.float32)
    src_x = (cx[:, None, None] + rx + alpha[:, None, None] * ry).astype(np.float32)
    return bilinear(images, src_y, src_x, fill=background)


def where_to_deskew(spec: list[dict]) -> str | None:
    """Where a model spec asks for deskewing: "raw" (step 1: the uint8 training images, before
    augmentation), "input" (step 4: the network input) or None (nowhere). The spec may be
    normalized or as written (before_augment defaults to false)."""
    if not spec or spec[0].get("type") != "deskew":
        return None
    return "raw" if spec[0].get("before_augment", False) else "input"


# --- augmentation: a random affine map and an elastic distortion (step 2) ---------------------
#
# Each image gets its own rotation angle, scale factor and shift, drawn from its key, so an image
# is distorted the same way whichever rank holds it. The map is applied backwards: output pixel
# p reads the input at  q = A^-1 (p - c - t) + c  (c the image centre, A rotation times scale, t
# the shift), zero outside the image.
#
# Elastic distortion (Simard, Steinkraus & Platt 2003, "Best practices for convolutional neural
# networks applied to visual document analysis"): every pixel of every image gets a random
# displacement, uniform in [-1, 1] in y and in x, and the two fields are smoothed by a Gaussian
# of width sigma and scaled by alpha:  d = alpha * (G_sigma * U).  A small sigma leaves noise, a
# large one a near-rigid shift; in between (sigma 4-6 px on 28x28 digits) the strokes bend the
# way handwriting varies. The displacement is added to the output pixel before the affine map's
# inverse,  q = A^-1 (p + d(p) - c - t) + c : exactly "distort the affinely warped image", in one
# resampling instead of two (one interpolation blurs less than two). Its uniforms come from the
# same keys on a stream of their own (ELASTIC_STREAM).

def draw_params(keys: np.ndarray, max_shift: float, max_rotate: float, max_scale: float):
    """Per-sample (angle in radians, scale, shift_x, shift_y), each uniform in its range."""
    u = 2.0 * keyed_uniform(keys, AUGMENT_STREAM, (4,)).astype(np.float64) - 1.0  # (B, 4): [-1, 1)
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
    return to_uint8(bilinear(images, src_y, src_x))


# --- normalisation (step 3) -------------------------------------------------------------------

def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (B, 28, 28) -> float32 (B, 28, 28, 1): (x/255 - MEAN) / STD."""
    x = images.astype(np.float32)[..., None]
    x *= np.float32(1 / 255)
    x -= np.float32(MEAN)
    x /= np.float32(STD)
    return x


# --- the whole path ---------------------------------------------------------------------------

def training_input(images: np.ndarray, keys: np.ndarray, spec: list[dict], data) -> np.ndarray:
    """uint8 (b, 28, 28) training images -> float32 (b, 28, 28, 1) network input: steps 1-4.
    keys: uint64 (b,), the images' sample keys; spec: the model spec; data: the run's [data]
    settings (augment, max_shift, max_rotate, max_scale, elastic_alpha, elastic_sigma)."""
    deskewing = where_to_deskew(spec)
    if deskewing == "raw":                      # upright first, then shifted and turned
        images = to_uint8(deskew(images))
    if data.augment:
        images = random_affine(images, keys, data.max_shift, data.max_rotate, data.max_scale,
                               data.elastic_alpha, data.elastic_sigma)
    x = normalize(images)
    if deskewing == "input":                    # augmented, then upright and centred again
        x = deskew(x[..., 0])[..., None]
    return x


# Test-time augmentation: the views of an image, beyond itself, in the order they are added.
TTA_SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """uint8 images (b, H, W) moved dy rows down and dx columns right by whole pixels, the
    background (0) coming in at the edges: a view of the same digit that a model which saw
    shifted digits in training should classify alike."""
    out = np.zeros_like(images)
    h, w = images.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def evaluation_input(images: np.ndarray, spec: list[dict]) -> np.ndarray:
    """uint8 (b, 28, 28) images -> float32 (b, 28, 28, 1) network input for evaluation and
    prediction: normalised, and deskewed if the spec asks for deskewing at all."""
    x = normalize(images)
    if where_to_deskew(spec) is not None:
        x = deskew(x[..., 0])[..., None]
    return x


def _show_steps(count: int = 256, repeats: int = 20) -> None:
    """Each step on `count` real test digits: what it changes, and its time per batch (the
    best of `repeats`, so a busy moment of a shared machine does not count)."""
    import time
    from types import SimpleNamespace

    from core.keyed_random import sample_keys
    from data.hdf5 import read_arrays
    from data.prepare import ensure_dataset

    images = read_arrays(ensure_dataset(quiet=True), "test")[0][:count]
    keys = sample_keys(0, 0, np.arange(count))

    def best_of(step):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            out = step()
            times.append(time.perf_counter() - started)
        return out, 1e3 * min(times)

    upright, ms = best_of(lambda: to_uint8(deskew(images)))
    print(f"1. deskew (uint8)   {ms:6.2f} ms  slant |alpha|: mean "
          f"{np.abs(moments(images)[2]).mean():.3f} -> {np.abs(moments(upright)[2]).mean():.3f}")
    for name, elastic in (("2. affine", (0.0, 0.0)), ("2. affine + elastic", (34.0, 4.0))):
        out, ms = best_of(lambda: random_affine(images, keys, 2.0, 10.0, 0.1, *elastic))
        print(f"{name:19s}{ms:6.2f} ms  changed pixels {np.mean(images != out):.1%}, "
              f"mean {images.mean():.1f} -> {out.mean():.1f}")
    x, ms = best_of(lambda: normalize(images))
    print(f"3. normalise        {ms:6.2f} ms  pixel mean {x.mean():+.3f}, std {x.std():.3f}")
    _, ms = best_of(lambda: deskew(x[..., 0]))
    print(f"4. deskew (float32) {ms:6.2f} ms")
    augment = SimpleNamespace(augment=True, max_shift=2.0, max_rotate=10.0, max_scale=0.1,
                              elastic_alpha=34.0, elastic_sigma=4.0)
    for spec in ([{"type": "flatten"}], [{"type": "deskew", "before_augment": True}],
                 [{"type": "deskew"}]):
        _, ms = best_of(lambda: training_input(images, keys, spec, augment))
        print(f"training_input, deskew {str(where_to_deskew(spec)):5s}: {ms:6.2f} ms "
              f"for {count} images, affine + elastic")


if __name__ == "__main__":
    _show_steps()
