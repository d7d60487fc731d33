"""An ablation: what each improvement adds, one at a time, on a fixed budget.

    python -m launch.lab.ablation                       # every row, mpirun -n 2 each
    python -m launch.lab.ablation --ranks 1 --rows sgd,momentum    # some rows, one process each
    python -m launch.lab.ablation --table runs/ablation  # the table again, from finished runs

Each row is an ordinary `dist.train` run: the previous row's configuration plus one change,
so the difference between two consecutive rows is what that change adds. The ladder goes from
the classic network (784-100-10, sigmoid, squared error, plain SGD) through momentum,
learning-rate decay and the softmax/cross-entropy loss to convolution, dropout, batch norm,
augmentation and deskewing (after augmentation, then before it instead). The budget is fixed
per family: 5 epochs for the 784-100-10 rows, 2 for the convolutional ones, so the table
shows what a change buys on a short budget (the presets in launch/configs/ are the
full-length versions).

Accuracies are test accuracies of each run's best.h5, chosen on validation (final.json); the
table cites each run's metrics.jsonl. Early stopping is a row of its own: it does not change
the model, it saves epochs, so its row reports the epochs it ran.

Writes <out>/<row>/ (the runs), <out>/ablation.json and <out>/ablation.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from dist.errors import ExpectedError
from dist.config import load_config
from launch.lab.fakehosts import MPIRUN   # the venv's mpirun, else the one on PATH

REPO = Path(__file__).resolve().parents[2]

# The classic 784-100-10 network of launch/configs/classic.toml.
MLP = '[{type="flatten"}, {type="dense", out=100}, {type="sigmoid"}, {type="dense", out=10}, {type="sigmoid"}]'
MLP_RELU = '[{type="flatten"}, {type="dense", out=100}, {type="relu"}, {type="dense", out=10}]'


DESKEW = '{type="deskew"}'                              # after augmentation
DESKEW_RAW = '{type="deskew", before_augment=true}'       # before augmentation


def conv_layers(dropout: bool, batchnorm: bool, deskew: str = "") -> str:
    """conv3x3(32)-pool-conv3x3(64)-pool-dense128-dense10, optionally with BN and dropout,
    and optionally after a deskew entry (DESKEW or DESKEW_RAW)."""
    bn = '{type="batchnorm"}, ' if batchnorm else ""
    drop = '{type="dropout", p=0.3}, ' if dropout else ""
    first = deskew + ", " if deskew else ""
    return ('[' + first + '{type="conv", out=32, kernel=3, pad=1}, ' + bn
            + '{type="relu"}, {type="maxpool"}, '
            '{type="conv", out=64, kernel=3, pad=1}, ' + bn + '{type="relu"}, {type="maxpool"}, '
            '{type="flatten"}, {type="dense", out=128}, ' + bn + '{type="relu"}, ' + drop
            + '{type="dense", out=10}]')


# The classic training: 784-100-10 sigmoid/MSE, plain SGD at a constant rate, batch 32.
CLASSIC_SGD = {"model.layers": MLP, "model.loss": "mse", "optim.lr": "2.0", "optim.momentum": "0.0",
           "optim.nesterov": "false", "optim.weight_decay": "0.0", "schedule.kind": "constant",
           "schedule.warmup_epochs": "0.0", "train.batch_size": "32", "data.augment": "false"}

# (name, what it adds, --set overrides on top of the previous row's). The first row of each
# family states its whole configuration.
ROWS = [
    ("sgd", "784-100-10 sigmoid, squared error, plain SGD, constant lr",
     {**CLASSIC_SGD, "train.epochs": "5", "train.patience": "0"}),
    ("momentum", "+ momentum 0.9 (heavy ball; lr / 10 to keep the step size)",
     {"optim.momentum": "0.9", "optim.lr": "0.2"}),
    ("nesterov", "+ Nesterov momentum", {"optim.nesterov": "true"}),
    ("step_decay", "+ step decay: lr x 0.3 every 2 epochs",
     {"schedule.kind": "step", "schedule.step_epochs": "2", "schedule.gamma": "0.3"}),
    ("cosine", "+ cosine decay with 0.5 epoch warmup instead",
     {"schedule.kind": "cosine", "schedule.warmup_epochs": "0.5"}),
    ("xent_relu", "+ ReLU hidden units, softmax cross-entropy",
     {"model.layers": MLP_RELU, "model.loss": "xent", "optim.lr": "0.05"}),
    ("conv", "+ convolution: conv-pool-conv-pool-dense128 (no dropout), 2 epochs, batch 128",
     {"model.layers": conv_layers(False, False), "train.epochs": "2",
      "train.batch_size": "128", "optim.weight_decay": "5e-4"}),
    ("dropout", "+ dropout 0.3 before the last layer",
     {"model.layers": conv_layers(True, False)}),
    ("batchnorm", "+ batch norm after every weight layer but the last",
     {"model.layers": conv_layers(True, True)}),
    ("augment", "+ random affine augmentation (2 px, 10 deg, 10%)",
     {"data.augment": "true", "data.max_shift": "2.0", "data.max_rotate": "10.0",
      "data.max_scale": "0.1"}),
    ("deskew", "+ deskew: each digit sheared upright before the first layer (data/pipeline.py)",
     {"model.layers": conv_layers(True, True, deskew=DESKEW)}),
    ("deskew_raw", "+ deskew the raw image before augmenting it instead (before_augment)",
     {"model.layers": conv_layers(True, True, deskew=DESKEW_RAW)}),
    ("early_stop", "+ early stopping, patience 1 (on the 'sgd' row's setup, 20 epochs)",
     {**CLASSIC_SGD, "train.epochs": "20", "train.patience": "1"}),
]


def row_configs() -> list[tuple[str, str, dict]]:
    """Each row's full override set: the previous row's plus its own changes."""
    rows, current = [], {}
    for name, adds, changes in ROWS:
        current = {**current, **changes}
        rows.append((name, adds, dict(current)))
    return rows


def run_row(name: str, overrides: dict, out: Path, ranks: int, extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "dist.train", "--preset", "cnn",
           "--set", f"run.dir={out}", "--set", f"run.name={name}",
           "--set", "run.progress=false", "--set", "train.eval_test_every=0"]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    cmd += extra
    if ranks > 1:
        cmd = [MPIRUN, "-n", str(ranks)] + cmd
    print(f"== {name}: {' '.join(cmd[-6:])} ...", flush=True)
    return subprocess.run(cmd, cwd=REPO, env=os.environ.copy()).returncode


def summarize(out: Path, names: list[str]) -> list[dict]:
    """One result per finished row, from its final.json and metrics.jsonl."""
    adds = {name: text for name, text, _ in ROWS}
    results = []
    for name in names:
        final_path = out / name / "final.json"
        if not final_path.is_file():
            continue
        final = json.loads(final_path.read_text())
        epochs = sum(1 for _ in open(out / name / "metrics.jsonl"))
        results.append({"row": name, "adds": adds[name], "test_acc": final["test_acc"],
                        "val_acc": final["best_val_acc"], "best_epoch": final["best_epoch"],
                        "epochs_run": epochs, "seconds": final["wall_seconds"],
                        "ranks": final["world_size"],
                        "metrics": str(out / name / "metrics.jsonl")})
    return results


def table(results: list[dict]) -> str:
    lines = ["| row | what it adds | test acc | change | val acc | epochs run | time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    previous = None
    for r in results:
        change = "" if previous is None or r["row"] in ("conv", "early_stop") \
            else f"{100 * (r['test_acc'] - previous):+.2f}"
        lines.append(f"| {r['row']} | {r['adds']} | {100 * r['test_acc']:.2f}% | {change} | "
                     f"{100 * r['val_acc']:.2f}% | {r['epochs_run']} | {r['seconds']:.0f} s |")
        previous = r["test_acc"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.lab.ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2, help="mpirun -n RANKS per row (1: no mpirun)")
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--out", default="runs/ablation", help="folder of the runs and the table")
    ap.add_argument("--table", metavar="DIR", help="only print the table of finished runs in DIR")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="added to every row (e.g. train.steps_per_epoch=20 for a smoke test)")
    args = ap.parse_args(argv)
    names = [name for name, _, _ in ROWS]
    if args.table:
        out = Path(args.table)
        print(table(summarize(out, names)))
        return 0
    chosen = args.rows.split(",") if args.rows else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        print(f"launch.lab.ablation: --rows: unknown row {unknown[0]!r}; "
              f"rows are {', '.join(names)}", file=sys.stderr)
        return 2
    if args.ranks < 1:
        print(f"launch.lab.ablation: --ranks {args.ranks}: must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    extra = [a for kv in args.set for a in ("--set", kv)]
    for name, _, overrides in row_configs():      # a bad --set ends here, before row 1 trains
        if name in chosen:
            try:
                load_config("cnn", overrides=[f"{k}={v}" for k, v in overrides.items()] + args.set)
            except ExpectedError as err:
                print(f"launch.lab.ablation: {err}", file=sys.stderr)
                return 2
    for name, _, overrides in row_configs():
        if name in chosen:
            code = run_row(name, overrides, out, args.ranks, extra)
            if code:
                print(f"launch.lab.ablation: row {name} failed (exit {code}); its log is above",
                      file=sys.stderr)
                return code
    results = summarize(out, [n for n in names if n in chosen])
    text = table(results)
    (out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "ablation.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
