"""Classify photos, scans or drawings of single digits with a trained checkpoint.

    python -m launch.predict runs/<name>/best.h5 photo.jpg scan.png drawings/
    python -m launch.predict runs/<name> digit.png --json --top 5
    python -m launch.predict runs/<name>/best.h5 photos/ --save-preprocessed seen/

Any format Pillow reads (PNG, JPEG, BMP, GIF, TIFF, WebP, ...), any size, dark ink on light
paper or the reverse. Each image is turned into what MNIST digits look like (launch/images.py:
grayscale, ink made light on black, cropped to the ink, fitted into 20x20, centred by mass in
28x28) and fed to the network with the training normalisation. A folder stands for the image
files in it (sorted by name). `--save-preprocessed DIR` writes the 28x28 image the network saw
(`<file name>.png`) and a 10x enlargement (`<file name>.x10.png`) for each input.

Output: one line per image, `path: digit  (d p, d p, d p)` with the top-K probabilities, or
with --json one JSON object per line. A file that cannot be classified is one line on stderr,
`error: <file>: <reason>`, and the others are still classified. Exit code 0 if every image was
classified, 1 if some failed, 2 if the checkpoint cannot be used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dist.errors import ExpectedError
from dist.evaluate import model_from_checkpoint, predict_scores, scores_to_proba
from launch.images import MAX_IMAGE_PIXELS, ImageError, preprocess_file

ZOOM = 10   # enlargement of the --save-preprocessed copies


def image_files(folder: Path) -> list[Path]:
    """The files in `folder` whose extension Pillow knows as an image format, sorted."""
    known = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in known)


def expand_inputs(args: list[str]) -> tuple[list[Path], list[str]]:
    """(files to classify, error lines): folders become their image files."""
    files, errors = [], []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = image_files(path)
            if not found:
                errors.append(f"error: {path}: no image files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"error: {path}: no such file or folder")
    return files, errors


def resolve_model_path(arg: str) -> Path:
    """A run folder means its best.h5 (the one validation chose), else a checkpoint file."""
    path = Path(arg)
    if path.is_dir() and (path / "best.h5").is_file():
        return path / "best.h5"
    return path   # load_checkpoint handles folders without best.h5 and reports missing files


def pixel_limit(flag: str | None) -> int:
    """The decompression-bomb limit: --max-pixels, else $MPIGRAD_MAX_IMAGE_PIXELS, else the
    default; a positive whole number, or one line naming where the bad value came from."""
    where, text = ("--max-pixels", flag) if flag is not None else \
        ("MPIGRAD_MAX_IMAGE_PIXELS", os.environ.get("MPIGRAD_MAX_IMAGE_PIXELS"))
    if text is None:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ExpectedError(f"{where}={text!r}: must be a positive whole number of pixels")
    return value


def save_preprocessed(folder: Path, source: Path, image: np.ndarray, used: set[str]) -> None:
    """Write `<source name>.png` (28x28) and an enlarged copy; unique names within one run."""
    name, n = source.name, 1
    while name in used:
        n += 1
        name = f"{source.stem}-{n}{source.suffix}"
    used.add(name)
    picture = Image.fromarray(image)   # uint8 (28, 28): mode "L"
    picture.save(folder / f"{name}.png")
    picture.resize((28 * ZOOM, 28 * ZOOM), Image.Resampling.NEAREST).save(
        folder / f"{name}.x{ZOOM}.png")


def format_line(path: Path, proba: np.ndarray, top: int) -> str:
    order = np.argsort(-proba)[:top]
    ranked = ", ".join(f"{d} {proba[d]:.3f}" for d in order)
    return f"{path}: {order[0]}  ({ranked})"


def as_json(path: Path, proba: np.ndarray, top: int) -> str:
    order = np.argsort(-proba)[:top]
    return json.dumps({"path": str(path), "digit": int(order[0]),
                       "top": [{"digit": int(d), "p": round(float(proba[d]), 6)} for d in order],
                       "proba": [round(float(p), 6) for p in proba]})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint file, or a run folder (its best.h5)")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                        help="image files, or folders of image files")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--top", type=int, default=3, metavar="K",
                        help="how many most likely digits to show (default 3)")
    parser.add_argument("--save-preprocessed", metavar="DIR",
                        help="write the 28x28 images the network saw into DIR")
    parser.add_argument("--max-pixels", metavar="N",
                        help=f"refuse larger images as possible decompression bombs (default "
                             f"{MAX_IMAGE_PIXELS}; env MPIGRAD_MAX_IMAGE_PIXELS)")
    args = parser.parse_args(argv)
    top = min(max(args.top, 1), 10)

    try:
        max_pixels = pixel_limit(args.max_pixels)
        out_dir = Path(args.save_preprocessed) if args.save_preprocessed else None
        if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
            raise ExpectedError(f"--save-preprocessed {out_dir}: exists and is not a folder; "
                                f"nothing is written over it")
        model, ckpt = model_from_checkpoint(resolve_model_path(args.checkpoint))
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
    except ExpectedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: --save-preprocessed {out_dir}: cannot create ({err.strerror or err})",
              file=sys.stderr)
        return 2
    loss = ckpt.config.get("model", {}).get("loss", "xent")

    files, errors = expand_inputs(args.images)
    for line in errors:
        print(line, file=sys.stderr)
    used: set[str] = set()
    failed = len(errors)
    for path in files:   # one at a time: a result appears as soon as its image is ready
        try:
            image = preprocess_file(path, max_pixels)
        except ImageError as err:
            print(f"error: {path}: {err}", file=sys.stderr, flush=True)
            failed += 1
            continue
        except OSError as err:   # unreadable file (permissions, vanished): not a bug of ours
            print(f"error: {path}: cannot read ({err.strerror or err})", file=sys.stderr)
            failed += 1
            continue
        proba = scores_to_proba(predict_scores(model, image[None]), loss)[0]
        print(as_json(path, proba, top) if args.json else format_line(path, proba, top),
              flush=True)
        if out_dir is not None:
            save_preprocessed(out_dir, path, image, used)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
