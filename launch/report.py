"""Pictures of a training run: curves, confusion matrix, mistakes, scaling (PNG + JSON).

    python -m launch.report runs/<name>                 # writes runs/<name>/report/
    python -m launch.report runs/<name> --out /tmp/rep --data ~/mnist.h5

Writes into RUN_DIR/report/ (or --out):

    curves.png      loss and accuracy (train / validation / test) and the learning rate per
                    epoch, from metrics.jsonl
    confusion.png   test-set confusion matrix of best.h5 (else the newest checkpoint), counts
    mistakes.png    up to 64 misclassified test digits, most confident mistakes first, with
                    true label, prediction and its probability
    scaling.png     images/s against ranks per preset, only if RUN_DIR/bench.json exists
                    (rows of {"preset", "ranks", "images_per_s", ...}, from launch.lab.bench)
    timeline.png    a few steps of every rank, only if RUN_DIR/timeline.json exists (trained
                    with --set run.timeline=N); each rank's time per phase, its wait in the
                    collectives and the straggler, if any, are printed (launch/trace.py)
    report.json     the numbers behind the pictures; its test accuracy and loss are those of
                    `python -m dist.evaluate <checkpoint> --json` (same function, same data)

A missing run folder, metrics.jsonl or checkpoint is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from data.errors import UserError
from data.hdf5 import open_mnist
from data.prepare import ensure_dataset
from data.shards import read_split
from dist.checkpoint import check_compatible, load_checkpoint
from dist.errors import ExpectedError
from dist.evaluate import evaluate, model_of, predict_scores, scores_to_proba
from launch.trace import analyse, plot_timeline, read_trace, summary_lines

# The backend is chosen before pyplot is imported: files only, no display needed.
import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GALLERY = 64
DPI = 110


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl as a list of per-epoch records (the last record of an epoch wins)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ExpectedError(f"{path}: no such file (is {run_dir} a training run folder?)")
    by_epoch = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            by_epoch[int(record["epoch"])] = record
        except (ValueError, KeyError, TypeError):
            raise ExpectedError(f"{path}:{n}: not a metrics record (JSON with an epoch)") from None
    if not by_epoch:
        raise ExpectedError(f"{path}: no epochs recorded yet")
    return [by_epoch[e] for e in sorted(by_epoch)]


def pick_checkpoint(run_dir: Path) -> Path:
    """best.h5 (chosen by validation), else the newest numbered checkpoint."""
    if (run_dir / "best.h5").is_file():
        return run_dir / "best.h5"
    found = sorted(run_dir.glob("ckpt-e*-s*.h5"))
    if not found:
        raise ExpectedError(f"{run_dir}: no checkpoint (best.h5 or ckpt-e*-s*.h5)")
    return found[-1]


def curves_of(records: list[dict]) -> dict:
    keys = ("train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc", "lr",
            "images_per_s")
    curves = {"epoch": [r["epoch"] for r in records]}
    curves.update({k: [r.get(k) for r in records] for k in keys})
    return curves


def plot_curves(curves: dict, path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    epochs = np.array(curves["epoch"])
    styles = {"train": "-o", "val": "-s", "test": "--^"}
    for ax, what in zip(axes[:2], ("loss", "acc")):
        for split, style in styles.items():
            ys = curves[f"{split}_{what}"]
            have = [i for i, y in enumerate(ys) if y is not None]   # test: not every epoch
            if have:
                scale = 100 if what == "acc" else 1
                ax.plot(epochs[have], [scale * ys[i] for i in have], style, ms=4, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if what == "loss" else "accuracy (%)")
        ax.set_title("loss" if what == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    if all(y is not None and y > 0 for y in curves["train_loss"] + curves["val_loss"]
           if y is not None):
        axes[0].set_yscale("log")   # losses shrink by orders of magnitude
    axes[2].plot(epochs, curves["lr"], "-o", ms=4, color="tab:purple")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate (at the epoch's last step)")
    axes[2].set_title("learning rate")
    axes[2].grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_confusion(confusion: np.ndarray, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 7))
    # Colour by log count, so the few off-diagonal mistakes show next to a full diagonal.
    shade = np.log1p(confusion)
    im = ax.imshow(shade, cmap="Blues")
    limit = shade.max() * 0.6
    for t in range(10):
        for p in range(10):
            n = confusion[t, p]
            if n:
                ax.text(p, t, str(n), ha="center", va="center", fontsize=9,
                        color="white" if shade[t, p] > limit else "black",
                        fontweight="bold" if t == p else "normal")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    ticks = [t for t in (0, 1, 10, 100, 1000, 10000) if t <= confusion.max()]
    bar.set_ticks(np.log1p(ticks))
    bar.set_ticklabels([str(t) for t in ticks])
    bar.set_label("count")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_mistakes(images: np.ndarray, mistakes: list[dict], path: Path, title: str) -> None:
    """One mosaic image with a caption above each digit (one Axes: fast, unlike 64 subplots)."""
    shown = mistakes[:GALLERY]
    cols = 8
    rows = max(1, math.ceil(len(shown) / cols))
    cell_w, cell_h, caption = 34, 48, 18        # pixels of the mosaic: digit 28x28 + margins
    mosaic = np.zeros((rows * cell_h, cols * cell_w), dtype=np.uint8)
    fig, ax = plt.subplots(figsize=(cols * 1.3, rows * 1.85 + 0.5))
    for k, m in enumerate(shown):
        r, c = divmod(k, cols)
        top, left = r * cell_h + caption, c * cell_w + 3
        mosaic[top:top + 28, left:left + 28] = images[m["position"]]
        ax.text(left + 14, top - 1.5, f"#{m['index']}\ntrue {m['true']}  pred {m['predicted']}"
                f"\np={m['probability']:.2f}", ha="center", va="bottom", fontsize=7.5,
                color="firebrick", linespacing=1.1)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    if not shown:
        ax.text(cols * cell_w / 2, cell_h / 2, "no mistakes", ha="center", va="center")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def read_bench(path: Path) -> list[dict]:
    """bench.json rows: a list, or a dict holding it under "rows"/"results"."""
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = data.get("rows", data.get("results", []))
    rows = [r for r in data if isinstance(r, dict)
            and {"ranks", "images_per_s"} <= r.keys() and r["images_per_s"] is not None]
    if not rows:
        raise ExpectedError(f"{path}: no rows with ranks and images_per_s")
    return rows


def plot_scaling(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 5))
    presets = sorted({str(r.get("preset", "?")) for r in rows})
    for preset in presets:
        mine = sorted((int(r["ranks"]), float(r["images_per_s"])) for r in rows
                      if str(r.get("preset", "?")) == preset)
        ranks = [k for k, _ in mine]
        speed = [v for _, v in mine]
        line, = ax.plot(ranks, speed, "-o", label=preset)
        # Ideal: linear in ranks from the smallest run.
        ax.plot(ranks, [speed[0] * k / ranks[0] for k in ranks], ":", color=line.get_color(),
                alpha=0.7)
    all_ranks = sorted({int(r["ranks"]) for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(all_ranks)
    ax.set_xticklabels([str(k) for k in all_ranks])
    ax.set_xlabel("MPI ranks")
    ax.set_ylabel("training images / s")
    ax.set_title("scaling (dotted: linear from the smallest run)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def build_report(run_dir: Path, out_dir: Path, data_path: str | None) -> dict:
    if not run_dir.is_dir():
        raise ExpectedError(f"{run_dir}: no such run folder")
    records = read_metrics(run_dir)
    ckpt_path = pick_checkpoint(run_dir)
    # As dist.evaluate does: the checkpoint names its data; the fingerprint must match it.
    ckpt = load_checkpoint(ckpt_path, resumable=False)
    data_cfg = ckpt.config.get("data", {})
    path = ensure_dataset(data_path or data_cfg.get("path") or None, quiet=True)
    check_compatible(ckpt, expect_fingerprint=open_mnist(path).fingerprint)
    model = model_of(ckpt)
    loss = ckpt.config["model"]["loss"]
    images, labels, indices = read_split(path, "test", split_seed=data_cfg.get("split_seed", 0),
                                         val_size=data_cfg.get("val_size", 5000))
    test = evaluate(model, images, labels, loss)       # the numbers dist.evaluate prints
    proba = scores_to_proba(predict_scores(model, images), loss)
    predicted = proba.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    mistakes = [{"position": int(i), "index": int(indices[i]), "true": int(labels[i]),
                 "predicted": int(predicted[i]), "probability": float(proba[i, predicted[i]])}
                for i in wrong]
    mistakes.sort(key=lambda m: -m["probability"])       # the most confident mistakes first

    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{run_dir.name}: {ckpt_path.name} (epoch {ckpt.epoch})"
    curves = curves_of(records)
    preset = ckpt.config.get("preset", "?")
    plot_curves(curves, out_dir / "curves.png", f"{run_dir.name} ({preset})")
    confusion = np.array(test["confusion"])
    plot_confusion(confusion, out_dir / "confusion.png",
                   f"{name}\ntest accuracy {100 * test['acc']:.2f}% ({test['n']} images)")
    plot_mistakes(images, mistakes, out_dir / "mistakes.png",
                  f"{name}: {len(mistakes)} test mistakes"
                  + (f", the {GALLERY} most confident" if len(mistakes) > GALLERY else ""))
    pictures = ["curves.png", "confusion.png", "mistakes.png"]
    bench = run_dir / "bench.json"
    if bench.is_file():
        try:
            plot_scaling(read_bench(bench), out_dir / "scaling.png")
            pictures.append("scaling.png")
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ExpectedError(f"{bench}: not benchmark results ({err})") from None
    else:
        print(f"note: no {bench}: scaling.png skipped (python -m launch.lab.bench writes it)")
    timeline = None
    if (run_dir / "timeline.json").is_file():
        trace = read_trace(run_dir / "timeline.json")
        timeline = analyse(trace)
        plot_timeline(trace, out_dir / "timeline.png",
                      f"{run_dir.name}: {timeline['update']} update, "
                      f"{len(timeline['ranks'])} rank(s)")
        pictures.append("timeline.png")

    report = {
        "run": str(run_dir), "checkpoint": str(ckpt_path), "epoch": ckpt.epoch,
        "preset": ckpt.config.get("preset"), "data": str(path),
        "test": {"acc": test["acc"], "loss": test["loss"], "n": test["n"],
                 "confusion": test["confusion"]},
        "curves": curves,
        "mistakes": sorted(({k: v for k, v in m.items() if k != "position"} for m in mistakes),
                           key=lambda m: m["index"]),
        "pictures": pictures,
        "timeline": timeline,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a training run folder (runs/<name>)")
    parser.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    parser.add_argument("--data", help="MNIST HDF5 file (default: the one the run used)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    out_dir = Path(args.out) if args.out else run_dir / "report"
    try:
        report = build_report(run_dir, out_dir, args.data)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{report['checkpoint']}: test accuracy {100 * report['test']['acc']:.2f}%, loss "
          f"{report['test']['loss']:.4f}, {len(report['mistakes'])} mistakes; wrote "
          f"{', '.join(report['pictures'])}, report.json to {out_dir}")
    if report["timeline"] is not None:
        print("\n".join(summary_lines(report["timeline"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
