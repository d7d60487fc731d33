"""Evaluate a model or a checkpoint: accuracy, loss and the confusion matrix.

Used by the training loop (rank 0, at each epoch end) and on its own:

    python -m dist.evaluate runs/<name>/best.h5            # test set
    python -m dist.evaluate runs/<name> --split val --json  # newest checkpoint, validation split

Single process; the checkpoint carries the model spec, so nothing else is needed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from core.losses import LOSSES, softmax
from core.model import Model
from core.replicas import Replicas
from data.errors import UserError
from data.hdf5 import open_mnist
from data.pipeline import TTA_SHIFTS, evaluation_input, shifted
from data.prepare import default_path, ensure_dataset
from data.shards import read_split
from dist.checkpoint import check_compatible, load_checkpoint, model_weights
from dist.config import check_model
from dist.cores import my_cores
from dist.errors import ExpectedError


# Images per forward pass when evaluating. Larger batches make bigger GEMMs, but best's im2col
# buffer for 1000 images is 660 MB, far outside every cache, so 256 images a pass are faster.
# A model whose activations are small (the MLP: 784 numbers an image at most) takes more
# images a pass, up to 4 x 256, so that each layer's output is still ~4 MB (2**20 floats).
# The measurements: launch/docs/benchmarks.md.
EVAL_BATCH = 256


def eval_batch_size(model: Model) -> int:
    """Images per forward pass for this model: 2**20 floats of its largest activation (the
    input included), but at least EVAL_BATCH and at most 4 x EVAL_BATCH."""
    largest = max([int(np.prod(model.input_shape))]
                  + [int(np.prod(layer.out_shape)) for layer in model.layers])
    return int(np.clip(2 ** 20 // largest, EVAL_BATCH, 4 * EVAL_BATCH))


def predict_scores(model: Model, images: np.ndarray, batch_size: int | None = None,
                   threads: int | None = None, tta: int = 0) -> np.ndarray:
    """Network outputs for uint8 images (N, 28, 28), in eval mode, batch by batch. (N, 10)
    With several threads (default: every core this process may use), each batch is split
    over copies of the model, one per thread (core/replicas.py), as in training.
    tta: test-time augmentation, the outputs averaged over each image and its first `tta`
    one-pixel shifts (data/pipeline.py, TTA_SHIFTS); 0 = the image alone."""
    batch_size = batch_size or eval_batch_size(model)
    threads = threads or len(my_cores())
    net = Replicas(model, threads) if threads > 1 and len(images) > 1 else model
    out = np.zeros((len(images), 10), dtype=np.float32)
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        for dy, dx in ((0, 0),) + TTA_SHIFTS[:tta]:
            view = shifted(batch, dy, dx) if (dy, dx) != (0, 0) else batch
            x = evaluation_input(view, model.spec)                 # as the model was trained on
            out[i:i + batch_size] += net.forward(x, train=False)
    if tta:
        out /= tta + 1
    return out


def add_tta_option(parser: argparse.ArgumentParser) -> None:
    """--tta N for the tools that score images (evaluate, ensemble, predict, serve)."""
    parser.add_argument("--tta", type=tta_views, default=0, metavar="N",
                        help="test-time augmentation: average each image's outputs with those "
                             f"of its first N one-pixel shifts (0..{len(TTA_SHIFTS)}; default 0)")


def tta_views(text: str) -> int:
    """--tta's value: a whole number of shifted views, 0..8 (argparse reports it in one line)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= len(TTA_SHIFTS):
        raise argparse.ArgumentTypeError(f"must be a whole number in 0..{len(TTA_SHIFTS)}, "
                                         f"got {text!r}")
    return n


def scores_to_proba(scores: np.ndarray, loss: str) -> np.ndarray:
    """Class probabilities: softmax of logits (xent), or sigmoid outputs normalised (mse)."""
    if loss == "xent":
        return softmax(scores)
    clipped = np.clip(scores, 1e-7, None)
    return clipped / clipped.sum(axis=1, keepdims=True)


def evaluate(model: Model, images: np.ndarray, labels: np.ndarray, loss: str,
             batch_size: int | None = None, threads: int | None = None, tta: int = 0) -> dict:
    """Mean loss, accuracy and confusion matrix (rows: true digit, columns: predicted)."""
    scores = predict_scores(model, images, batch_size, threads, tta)
    labels = labels.astype(np.int64)
    total_loss, _ = LOSSES[loss](scores, labels, divisor=max(len(labels), 1))
    predicted = scores.argmax(axis=1)
    confusion = np.bincount(labels * 10 + predicted, minlength=100).reshape(10, 10)
    return {"loss": float(total_loss), "acc": float((predicted == labels).mean()),
            "n": int(len(labels)), "confusion": confusion.tolist()}


def model_from_checkpoint(path, data_fingerprint: str | None = None, raw: bool = False):
    """Rebuild the model a checkpoint (or model file) records and load its weights. Returns
    (model, ckpt)."""
    ckpt = load_checkpoint(path, expect_fingerprint=data_fingerprint, resumable=False)
    return model_of(ckpt, raw), ckpt


def model_of(ckpt, raw: bool = False) -> Model:
    """The model of an already loaded checkpoint, with its weights and batch-norm state: the
    moving average of the weights when the run kept one (dist.checkpoint.model_weights),
    unless `raw`."""
    check_model(ckpt.spec, EVAL_BATCH, where=f"{ckpt.path}: its model")  # before allocating
    model = Model(ckpt.spec, seed=0)
    if (model.theta.size, model.state.size) != (ckpt.theta.size, ckpt.state.size):
        raise ExpectedError(f"{ckpt.path}: parameter sizes do not match its own spec")
    model.theta[...], model.state[...] = model_weights(ckpt, raw)
    return model


def data_file(recorded: str, named: str = "") -> Path:
    """The MNIST file to evaluate on: ``named`` (--data), which must exist -- a file the user
    names is read, never made here; else the file the run trained on (its data.path); else the
    default data location, prepared on first use. A recorded path that does not exist here (a
    model trained on another machine, like the shipped ones) also means the default location,
    said in one line. Checkpoints carry the data's fingerprint: a different file is refused."""
    if named and not Path(named).is_file():
        raise ExpectedError(f"--data {named}: no such file (prepare it with python -m "
                            f"data.prepare --out {named})")
    if not named and recorded and not Path(recorded).is_file():
        print(f"note: data.path {recorded} (where the model was trained) does not exist here; "
              f"using the default data location, {default_path()}", file=sys.stderr, flush=True)
        recorded = ""
    return ensure_dataset(named or recorded or None, quiet=True)


def format_confusion(confusion) -> str:
    rows = ["true\\pred " + " ".join(f"{d:>5}" for d in range(10))]
    for digit, row in enumerate(confusion):
        rows.append(f"{digit:>9} " + " ".join(f"{v:>5}" for v in row))
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint or model file, or run folder (newest "
                        "checkpoint)")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--data", default="", help="MNIST HDF5 file (default: the run's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--raw", action="store_true", help="the trained weights, not their "
                        "moving average (runs with optim.ema_decay > 0)")
    add_tta_option(parser)
    args = parser.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint, resumable=False)   # weights, spec, config
        data_cfg = ckpt.config.get("data", {})
        path = data_file(data_cfg.get("path", ""), args.data)
        check_compatible(ckpt, expect_fingerprint=open_mnist(path).fingerprint)
        model = model_of(ckpt, args.raw)
        images, labels, _ = read_split(path, args.split, split_seed=data_cfg.get("split_seed", 0),
                                       val_size=data_cfg.get("val_size", 5000))
        result = evaluate(model, images, labels, ckpt.config["model"]["loss"], tta=args.tta)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result.update(checkpoint=str(ckpt.path), split=args.split, epoch=ckpt.epoch, raw=args.raw,
                  tta=args.tta)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{ckpt.path} on {args.split} ({result['n']} images): accuracy "
              f"{100 * result['acc']:.2f}%  loss {result['loss']:.4f}")
        print(format_confusion(result["confusion"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
