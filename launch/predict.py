"""Classify photos, scans or drawings of single digits with a trained checkpoint.

    python -m launch.predict runs/<name>/best.h5 photo.jpg scan.png drawings/
    python -m launch.predict runs/<name> digit.png --json --top 5
    python -m launch.predict runs/<name>/best.h5 photos/ --save-preprocessed seen/
    python -m launch.predict runs/<ensemble name> digit.png     # members' averaged probabilities
    python -m launch.predict digit.png                          # the model shipped in launch/models

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

The model, any folder kind dist.ensemble and dist.train write (``model_files``):
  a checkpoint or model file (.h5);
  an ensemble folder with ensemble.json: the models it lists (members' best.h5, best-raw.h5
    or snapshots), probabilities averaged as dist.ensemble averaged them;
  an ensemble folder without one (still training): each member-<m>/ as a run folder;
  a run folder: its best.h5 (or model.h5, a shipped model), else its cycle-end snapshots
    (snapshot-cCC.h5, averaged: a snapshot ensemble), else its newest checkpoint;
or, when the first argument is none of these, the model shipped in launch/models/ (one line
on stderr says so). Every file is checked as dist.checkpoint checks it (dist/modelfile.py): a
bad one is one line naming the file and the field, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dist.checkpoint import SNAPSHOT_GLOB, numbered_checkpoints
from dist.errors import ExpectedError
from dist.evaluate import add_tta_option, model_from_checkpoint, predict_scores, scores_to_proba
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


# The model shipped in the repository, used when no checkpoint is named: one compact checkpoint
# (best/model.h5), or an ensemble (ensemble/: the model files its ensemble.json lists).
# $MPIGRAD_MODELS points elsewhere.
SHIPPED_MODELS = Path(__file__).resolve().parent / "models"
HOW_TO_GET_A_MODEL = ("no model: name a checkpoint or run folder, or train one with "
                      "`mpirun -n 2 python -m dist.train --preset best` and pass its run folder "
                      "(runs/<name>)")


def checkpoint_in(folder: Path) -> Path | None:
    """The checkpoint a folder stands for: best.h5 (chosen on validation), or model.h5 (a
    shipped model); None if it has neither."""
    return next((folder / name for name in ("best.h5", "model.h5")
                 if (folder / name).is_file()), None)


def ensemble_members(folder: Path) -> list[Path]:
    """The member folders of an ensemble folder (dist.ensemble's member-0, member-1, ...)."""
    members = [p for p in folder.glob("member-*") if p.is_dir() and p.name[7:].isdigit()]
    return sorted(members, key=lambda p: int(p.name[7:]))


def is_model_path(arg: str) -> bool:
    """Does a command-line argument name a model rather than images? A .h5 file, a run folder,
    a shipped model's folder or an ensemble folder."""
    path = Path(arg)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return True
    return path.is_dir() and ((path / "ensemble.json").is_file() or bool(run_folder_models(path))
                              or bool(ensemble_members(path)))


def run_folder_models(folder: Path) -> list[Path]:
    """The models a run folder stands for: best.h5 (or model.h5), else its cycle-end snapshots
    (a snapshot ensemble), else its newest checkpoint; [] if it has none of these."""
    found = checkpoint_in(folder)
    if found is not None:
        return [found]
    return sorted(folder.glob(SNAPSHOT_GLOB)) or numbered_checkpoints(folder)[-1:]


def listed_models(folder: Path) -> list[Path]:
    """The models ensemble.json says dist.ensemble averaged ("models": paths inside the
    folder), each of which must be there."""
    listing = folder / "ensemble.json"
    try:
        models = json.loads(listing.read_text()).get("models")
    except (OSError, ValueError, AttributeError) as err:
        raise ExpectedError(f"{listing}: cannot read it ({getattr(err, 'strerror', None) or err})"
                            ) from None
    if not (isinstance(models, list) and models and all(isinstance(m, str) for m in models)):
        raise ExpectedError(f"{listing}: \"models\" must be a non-empty list of file names")
    files = []
    for name in models:
        file = folder / name
        # A listing names the ensemble's own files: never one outside its folder.
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ExpectedError(f"{listing}: \"models\" entry {name!r} is outside the folder")
        if not file.is_file():
            raise ExpectedError(f"{listing}: \"models\" entry {name!r}: no such file")
        files.append(file)
    return files


def model_files(path: Path) -> list[Path]:
    """The model files a command-line model stands for, one per averaged model (see the
    module's docstring for the folder kinds)."""
    if not path.is_dir():
        return [path]          # load_checkpoint says what is wrong with it, naming it
    if (path / "ensemble.json").is_file():
        return listed_models(path)
    members = ensemble_members(path) if checkpoint_in(path) is None else []
    if members:
        files = []
        for member in members:
            found = run_folder_models(member)
            if not found:
                raise ExpectedError(f"{member}: ensemble member without best.h5, model.h5, "
                                    "snapshots or checkpoints (still starting?)")
            files += found
        return files
    return run_folder_models(path) or [path]


def shipped_model(models_dir: str | Path | None = None) -> Path | None:
    """The shipped model's folder (the single model first: faster than an ensemble), or None."""
    folder = Path(models_dir or os.environ.get("MPIGRAD_MODELS") or SHIPPED_MODELS)
    for candidate in (folder / "best", folder / "ensemble"):
        if candidate.is_dir() and is_model_path(str(candidate)):
            return candidate
    return None


class Classifier:
    """A checkpoint, or an ensemble's members, as one function: images -> probabilities.

    An ensemble averages its members' class probabilities, as dist.ensemble does; each member's
    own loss says how its outputs become probabilities."""

    def __init__(self, source: str | Path, tta: int = 0):
        path = Path(source)
        self.tta = tta          # test-time augmentation: shifted views (dist.evaluate)
        files = model_files(path)
        self.models = []   # (model, loss): the loss is known, load_checkpoint checked it
        for file in files:   # load_checkpoint handles folders without best.h5, missing files
            model, ckpt = model_from_checkpoint(file)
            self.models.append((model, ckpt.config["model"]["loss"]))
        self.path = files[0] if len(files) == 1 else path

    def describe(self) -> str:
        n = len(self.models)
        return str(self.path) + (f" (ensemble of {n} models)" if n > 1 else "")

    def proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) of uint8 MNIST-style images (N, 28, 28)."""
        return np.mean([scores_to_proba(predict_scores(model, images, tta=self.tta), loss)
                        for model, loss in self.models], axis=0)


def load_classifier(source: str | None, models_dir=None, say=print, tta: int = 0) -> Classifier:
    """The named model, else the shipped one (saying so in one line); ExpectedError saying how to
    get a model when there is neither."""
    if source is None:
        found = shipped_model(models_dir)
        if found is None:
            raise ExpectedError(HOW_TO_GET_A_MODEL)
        classifier = Classifier(found, tta)
        say(f"no checkpoint named: using the shipped model {classifier.describe()}")
        return classifier
    return Classifier(source, tta)


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


def add_max_pixels_option(parser: argparse.ArgumentParser) -> None:
    """--max-pixels, shared with launch.serve; read it with pixel_limit(args.max_pixels)."""
    parser.add_argument("--max-pixels", metavar="N",
                        help=f"refuse larger images as possible decompression bombs (default "
                             f"{MAX_IMAGE_PIXELS}; env MPIGRAD_MAX_IMAGE_PIXELS)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="[CHECKPOINT] IMAGE_OR_DIR",
                        help="a checkpoint file, run folder (its best.h5) or ensemble folder "
                             "(default: the shipped model), then image files or folders of them")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--top", type=int, default=3, metavar="K",
                        help="how many most likely digits to show (default 3)")
    parser.add_argument("--save-preprocessed", metavar="DIR",
                        help="write the 28x28 images the network saw into DIR")
    add_max_pixels_option(parser)
    add_tta_option(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 10:
        parser.error(f"--top {args.top}: must be 1 to 10 (there are 10 digits)")
    top = args.top

    named = args.inputs[0] if is_model_path(args.inputs[0]) else None
    images = args.inputs[1:] if named else args.inputs
    if not images:
        parser.error("no images to classify")
    try:
        max_pixels = pixel_limit(args.max_pixels)
        out_dir = Path(args.save_preprocessed) if args.save_preprocessed else None
        if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
            raise ExpectedError(f"--save-preprocessed {out_dir}: exists and is not a folder; "
                                f"nothing is written over it")
        classifier = load_classifier(named, say=lambda line: print(line, file=sys.stderr),
                                     tta=args.tta)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
    except ExpectedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: --save-preprocessed {out_dir}: cannot create ({err.strerror or err})",
              file=sys.stderr)
        return 2

    files, errors = expand_inputs(images)
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
        proba = classifier.proba(image[None])[0]
        print(as_json(path, proba, top) if args.json else format_line(path, proba, top),
              flush=True)
        if out_dir is not None:
            try:
                save_preprocessed(out_dir, path, image, used)
            except OSError as err:   # a full disk, a folder made read-only meanwhile
                print(f"error: --save-preprocessed {out_dir}: cannot write the image of {path} "
                      f"({err.strerror or err}); the classifications above are complete",
                      file=sys.stderr)
                return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
