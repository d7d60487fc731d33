"""Deskew: an input layer that straightens slanted digits (a classic MNIST preprocessing).

People slant their handwriting by different amounts. Deskewing measures each image's slant
from its second moments and shears it upright, so the network sees one upright digit instead
of many slants (LeCun et al. 1998 list deskewed inputs for several of their MNIST models;
Ciresan et al. 2012 averaged networks trained on differently preprocessed inputs, whose
errors differ, which is what an ensemble needs).

For an image with pixel weights w (intensity above the background), centre of mass (cy, cx)
and moments  var_y = E[(y - cy)^2],  cov = E[(x - cx)(y - cy)]  (expectations under w), the
slant is  alpha = cov / var_y : how far x moves per row. Output pixel (r, c), at (ry, rx)
from the image centre, reads the input at

    y = cy + ry,    x = cx + rx + alpha * ry

(bilinear, core/resample.py; the background outside), a shear that makes cov = 0 and moves
the centre of mass to the image centre.

As a layer ({type = "deskew"}, first in the spec) it is part of the model: the checkpoint
records it, so training, evaluation, ensembles and `launch.predict` on your own images all
deskew the same way. It has no parameters and acts on each image alone, so it keeps
world-size invariance. Nothing needs dL/dimage, so it has no backward: the model's backward
stops at the first layer with parameters.

Where it sits against augmentation (which the training loop applies to the raw images,
before the model) is the one choice:

- `{type = "deskew"}`: the layer deskews every batch, augmented training images included.
  Deskewing re-centres each image and removes its slant, so it undoes augmentation's shift
  and much of its rotation; what augmentation still adds is the scale and the change of shape.
- `{type = "deskew", before_augment = true}`: in training the raw images are deskewed first
  (`deskew_raw`, called by dist.train's `local_batch`) and then augmented, so the network
  sees upright digits that are shifted, rotated and scaled; the layer passes training
  batches through as they are. At evaluation (train=False) it deskews as above, so a
  checkpoint still deskews every image it is given.

    python -m core.deskew       # the slant of real MNIST digits before and after
Tested by tests/test_core_deskew.py.
"""
import numpy as np

from core.layers import Layer
from core.resample import bilinear, to_uint8

# |alpha| above 1 (a slant of more than 45 degrees) only comes from degenerate images -- a
# blank, or a single horizontal stroke with var_y ~ 0 -- that a shear cannot improve.
MAX_SLANT = 1.0


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
    """Images (B, H, W) -> float32 (B, H, W), each sheared upright and centred."""
    b, h, w = images.shape
    background = images.min(axis=(1, 2))        # (B,): weight 0, and what fills in outside
    cy, cx, alpha = moments(images, background)
    ry = np.arange(h, dtype=np.float64)[None, :, None] - (h - 1) / 2.0    # (1, H, 1)
    rx = np.arange(w, dtype=np.float64)[None, None, :] - (w - 1) / 2.0    # (1, 1, W)
    src_y = np.broadcast_to(cy[:, None, None] + ry, (b, h, w)).astype(np.float32)
    src_x = (cx[:, None, None] + rx + alpha[:, None, None] * ry).astype(np.float32)
    return bilinear(images, src_y, src_x, fill=background)


def deskew_raw(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W) -> uint8 (B, H, W): deskewed and rounded back, ready for augmentation."""
    return to_uint8(deskew(images))


def deskews_before_augment(spec: list[dict]) -> bool:
    """Whether a model spec asks the data path to deskew raw training images."""
    return spec[0].get("type") == Deskew.type_name and spec[0].get("before_augment", False)


class Deskew(Layer):
    """(B, H, W, 1) -> (B, H, W, 1): each image deskewed. No parameters, no backward."""
    type_name = "deskew"
    KEYS = {"before_augment": (bool, False, "flag")}

    def __init__(self, index, input_shape, before_augment=False):
        super().__init__(index, input_shape)
        if len(self.input_shape) != 3 or self.input_shape[2] != 1:
            self.fail(f"needs single-channel images (H, W, 1), got input shape {self.input_shape}; "
                      "put it first in the model")
        if before_augment and index != 0:
            self.fail("before_augment deskews the raw images, so the layer must come first")
        self.before_augment = before_augment

    def flops(self, input_shape):
        return 20 * int(np.prod(input_shape))   # moments and the four-neighbour blend

    def forward(self, x, train):
        if train and self.before_augment:
            return x        # the training loop deskewed these before augmenting them
        return deskew(x[..., 0]).astype(x.dtype, copy=False)[..., None]

    def backward(self, dy):
        raise RuntimeError(f"layer {self.index} (deskew) has no input gradient: it is an input "
                           "transform, and Model.backward stops at the first layer with parameters")


if __name__ == "__main__":
    from data.hdf5 import read_arrays
    from data.prepare import ensure_dataset
    images, labels = read_arrays(ensure_dataset(quiet=True), "test")
    before = moments(images[:2000])[2]
    after = moments(deskew(images[:2000]))[2]
    print(f"slant |alpha| of 2000 test digits: mean {np.abs(before).mean():.3f} before, "
          f"{np.abs(after).mean():.3f} after deskewing")
