"""Turn a photo, scan or drawing of one digit into a 28x28 MNIST-style image (numpy + Pillow).

MNIST digits are light ink on a black background, the ink's bounding box scaled to fit a
20x20 box (aspect ratio kept, anti-aliased), pasted into 28x28 and shifted so that the centre
of mass sits at the centre. A network trained on them expects exactly that, so a user's image
goes through the same steps:

    load_gray      Pillow: any format, EXIF orientation, transparency, 16-bit; grayscale 0..1;
                   big images are reduced to at most WORK_SIDE pixels on the long side
    ink_signal     the paper is modelled by a plane fitted to the border pixels (mild uneven
                   lighting), subtracted; whichever sign stands out more is the ink, so dark
                   ink on light paper and the reverse both come out as light ink on zero
    find_ink       a box blur against noise, Otsu's threshold, 8-connected blobs: the largest
                   blob and the sizeable blobs near it are the digit, isolated specks are not
    to_mnist       crop to those blobs, scale the grey levels (not the mask) into 20x20,
                   paste into 28x28, shift the centre of mass to (14, 14), 0..255 uint8

Problems a user can cause raise ImageError with a short reason ("not an image", "empty image",
"blank image: no ink found", "image too large (decompression bomb)").

Try it: python -m launch.predict CKPT photo.jpg --save-preprocessed seen/
"""
from __future__ import annotations

import io
import warnings
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_IMAGE_PIXELS = 64_000_000   # 8000 x 8000; more is refused as a possible decompression bomb
WORK_SIDE = 512                 # long side of the working copy: plenty for a 20-pixel digit
MIN_CONTRAST = 0.05             # ink must differ from the paper by 5% of full scale ...
NOISE_FACTOR = 4.0              # ... and by 4 standard deviations of the paper's noise
BLOB_MIN_SHARE = 0.02           # blobs lighter than 2% of the largest are specks
BLOB_REACH = 0.5                # other blobs count if within half the digit's size of it
FAINT = 0.1                     # faint rims below 10% become 0 (MNIST: ~19% of pixels are ink)
COM_TARGET = 14.0               # mean centre of mass of MNIST test digits, (row, col) ~ (14, 14)


class ImageError(ValueError):
    """A file that cannot be classified; the message is the reason, without the file name."""


# -- loading ----------------------------------------------------------------------------------

def load_gray(source, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Grayscale float64 array in 0..1 (H, W), long side at most WORK_SIDE. `source` is a file
    path, or a file's bytes (an upload to launch.serve)."""
    if isinstance(source, bytes):
        empty, source = not source, io.BytesIO(source)
    else:
        source = Path(source)
        empty = source.stat().st_size == 0
    if empty:
        raise ImageError("empty image")
    Image.MAX_IMAGE_PIXELS = max_pixels     # Pillow warns above this and refuses above twice it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.format == "JPEG":    # decode big JPEGs at 1/2..1/8 scale: much faster
                    img.draft("RGB", (2 * WORK_SIDE, 2 * WORK_SIDE))
                img.load()
                img = ImageOps.exif_transpose(img)
                gray = _to_gray(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large (decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # truncated or corrupt data
        raise ImageError(f"not an image (unreadable: {str(err).splitlines()[0][:80]})") from None
    if gray.size == 0:
        raise ImageError("empty image")
    return gray


def _to_gray(img: Image.Image) -> np.ndarray:
    """0..1 luminance of a loaded Pillow image; transparent parts become plain paper."""
    if img.width == 0 or img.height == 0:
        raise ImageError("empty image")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):        # 16-bit or float scans
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = arr.min(), arr.max()
        gray = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    else:
        has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
        rgba = img.convert("RGBA") if has_alpha else None
        gray = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
        if rgba is not None:
            alpha = np.asarray(rgba, dtype=np.float64)[..., 3] / 255.0
            if alpha.min() < 1.0:
                # A drawing on a transparent canvas: lay it on paper of the opposite shade to
                # its strokes (dark strokes on white, light strokes on black).
                opaque = alpha > 0.5
                ink_shade = gray[opaque].mean() if opaque.any() else 0.0
                paper = 1.0 if ink_shade < 0.5 else 0.0
                gray = gray * alpha + paper * (1.0 - alpha)
    h, w = gray.shape
    if max(h, w) > WORK_SIDE:   # area averaging: keeps thin strokes and averages out noise
        scale = WORK_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        gray = np.asarray(Image.fromarray(gray.astype(np.float32))
                          .resize(size, Image.Resampling.BOX), dtype=np.float64)
    return gray


# -- finding the ink --------------------------------------------------------------------------

def _border(h: int, w: int) -> np.ndarray:
    """Boolean mask of a frame ~4% of the image wide (at least one pixel)."""
    k = max(1, round(0.04 * min(h, w)))
    frame = np.zeros((h, w), dtype=bool)
    frame[:k], frame[-k:], frame[:, :k], frame[:, -k:] = True, True, True, True
    return frame


def ink_signal(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """(ink, noise): ink >= 0 where the digit is, 0 on the paper; noise = paper's std. dev."""
    h, w = gray.shape
    frame = _border(h, w)
    rows, cols = np.nonzero(frame)
    design = np.column_stack([np.ones(rows.size), rows / h, cols / w])
    values = gray[frame]
    keep = np.ones(values.size, dtype=bool)
    for _ in range(3):   # fit the plane, drop outliers (ink touching the border), fit again
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        resid = values - design @ coef
        mad = np.median(np.abs(resid[keep])) * 1.4826
        keep = np.abs(resid) <= max(3 * mad, 1e-3)
    yy, xx = np.mgrid[0:h, 0:w]
    signal = gray - (coef[0] + coef[1] * yy / h + coef[2] * xx / w)
    # Ink is whichever side departs more from the paper: darker (pen on paper) or lighter.
    lo, hi = np.percentile(signal, [0.5, 99.5])
    if -lo > hi:
        signal = -signal
    return np.clip(signal, 0.0, None), float(mad)


def box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window (edges padded by repetition), via a summed-area table."""
    k = 2 * r + 1
    padded = np.pad(x, r + 1, mode="edge")[:-1, :-1]   # one extra leading row/col for the sums
    padded[0, :] = 0.0
    padded[:, 0] = 0.0
    s = padded.cumsum(0).cumsum(1)
    return (s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]) / (k * k)


def otsu_threshold(x: np.ndarray, bins: int = 256) -> float:
    """The threshold maximising the between-class variance of x's histogram."""
    hist, edges = np.histogram(x, bins=bins)
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)                       # weight of the class below each cut
    m0 = np.cumsum(p * centres)             # its (unnormalised) mean
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = 0.0
    return float(edges[np.argmax(between) + 1])


def label_blobs(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask by breadth-first search: (labels, count)."""
    h, w = mask.shape
    inside = np.pad(mask, 1).tolist()   # a False frame spares bounds checks; lists are much
    labels = [[0] * (w + 2) for _ in range(h + 2)]  # faster than numpy for per-pixel access
    count = 0
    ys, xs = np.nonzero(mask)
    for y0, x0 in zip(ys.tolist(), xs.tolist()):
        if labels[y0 + 1][x0 + 1]:
            continue
        count += 1
        labels[y0 + 1][x0 + 1] = count
        queue = deque([(y0 + 1, x0 + 1)])
        while queue:
            y, x = queue.popleft()
            for ny in (y - 1, y, y + 1):
                row, lab = inside[ny], labels[ny]
                for nx in (x - 1, x, x + 1):
                    if row[nx] and not lab[nx]:
                        lab[nx] = count
                        queue.append((ny, nx))
    return np.array(labels, dtype=np.int32)[1:-1, 1:-1], count


def label_blobs_coarse(mask: np.ndarray, budget: int = 4000) -> tuple[np.ndarray, int]:
    """label_blobs on a mask OR-pooled 2x2 until at most `budget` pixels are set (speed).

    Pooling never splits a blob; it may join blobs a pixel or two apart, which is harmless.
    """
    small, f = mask, 1
    while small.sum() > budget and min(small.shape) > 8:
        h, w = small.shape
        small = np.pad(small, ((0, h % 2), (0, w % 2)))
        small = small.reshape(small.shape[0] // 2, 2, small.shape[1] // 2, 2).any(axis=(1, 3))
        f *= 2
    labels, count = label_blobs(small)
    labels = np.repeat(np.repeat(labels, f, axis=0), f, axis=1)[:mask.shape[0], :mask.shape[1]]
    return labels * mask, count


def find_ink(ink: np.ndarray, noise: float) -> np.ndarray:
    """Boolean mask of the digit's pixels (the chosen blobs); ImageError if there is none."""
    h, w = ink.shape
    r = max(1, round(min(h, w) / 150))
    smooth = box_blur(ink, r)
    if smooth.max() <= MIN_CONTRAST:
        raise ImageError("blank image: no ink found")
    mask = smooth > otsu_threshold(smooth)
    level = float(np.median(ink[mask]))
    if level < max(MIN_CONTRAST, NOISE_FACTOR * noise):   # only noise above the threshold
        raise ImageError("blank image: no ink found")
    labels, count = label_blobs_coarse(mask)
    mass = np.bincount(labels.ravel(), weights=ink.ravel(), minlength=count + 1)[1:]
    main = int(np.argmax(mass)) + 1
    ys, xs = np.nonzero(labels == main)
    if ys.size < max(4, 2e-4 * h * w):
        raise ImageError("blank image: no ink found")
    # Keep blobs of some weight near the main stroke (a pen lifted mid-digit, a broken scan).
    reach_y = BLOB_REACH * (ys.max() - ys.min() + 1)
    reach_x = BLOB_REACH * (xs.max() - xs.min() + 1)
    keep = np.zeros(count + 1, dtype=bool)
    keep[main] = True
    for b in np.flatnonzero(mass >= BLOB_MIN_SHARE * mass[main - 1]) + 1:
        by, bx = np.nonzero(labels == b)
        if (by.min() <= ys.max() + reach_y and by.max() >= ys.min() - reach_y
                and bx.min() <= xs.max() + reach_x and bx.max() >= xs.min() - reach_x):
            keep[b] = True
    return keep[labels]


# -- into the MNIST frame ---------------------------------------------------------------------

def to_mnist(ink: np.ndarray, digit: np.ndarray) -> np.ndarray:
    """Crop ink to the digit mask, fit into 20x20, centre by mass in 28x28: uint8 (28, 28)."""
    h, w = ink.shape
    r = max(1, round(min(h, w) / 150)) + 1
    near = box_blur(digit.astype(np.float64), r) > 0     # the digit plus its anti-aliased rim
    level = np.percentile(ink[digit], 50)                 # typical stroke intensity
    # Stroke cores saturate (as ~40% of MNIST's ink pixels are 255); the paper becomes 0.
    values = np.clip(ink / level, 0.0, 1.0) * near
    ys, xs = np.nonzero(digit)
    crop = values[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    ch, cw = crop.shape
    scale = 20.0 / max(ch, cw)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    small = Image.fromarray(crop.astype(np.float32)).resize(
        size, Image.Resampling.LANCZOS)
    small = np.clip(np.asarray(small, dtype=np.float64), 0.0, 1.0)
    if small.max() <= 1e-6:
        raise ImageError("blank image: no ink found")
    small /= small.max()                                 # thin pen strokes: still full intensity
    small[small < FAINT] = 0.0                           # ringing and noise halo
    frame = np.zeros((28, 28))
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    frame[top:top + size[1], left:left + size[0]] = small
    # Integer shift of the centre of mass to the centre, as the original MNIST preparation.
    yy, xx = np.mgrid[0:28, 0:28]
    total = frame.sum()
    dy = int(round(COM_TARGET - (frame * yy).sum() / total))
    dx = int(round(COM_TARGET - (frame * xx).sum() / total))
    frame = shift(frame, dy, dx)
    return np.round(frame * 255).astype(np.uint8)


def shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """a moved by (dy, dx) pixels, zero-filled (no wrap-around)."""
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def preprocess_gray(gray: np.ndarray) -> np.ndarray:
    """Grayscale 0..1 array of any size -> MNIST-style uint8 (28, 28)."""
    ink, noise = ink_signal(gray)
    return to_mnist(ink, find_ink(ink, noise))


def preprocess_file(source, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file (its path or its bytes) -> MNIST-style uint8 (28, 28); ImageError with the
    reason otherwise."""
    return preprocess_gray(load_gray(source, max_pixels))
