"""Protocol-20's T3: wall time from the command to 99.0/99.5/99.6/99.7% test accuracy.

    python launch/docs/runs/p20/time_to_accuracy.py --runs RUN [RUN ...] \
        [--ensemble ENSEMBLE_DIR [--snapshots]] --out t3.json

Runs: every kept epoch checkpoint of each run is evaluated on the test set, with the raw
weights (protocol-20 D1), its wall time being that epoch's `seconds.wall` in metrics.jsonl
(from the run's start). Ensemble: the average of the first k models (members, or a cyclic
run's snapshots) for k = 1, 2, ..., at the wall time the k-th one was done (members: the sum of
their `final.json` wall times; snapshots: the cycle's last epoch). These are many test figures
by construction: reporting only, made after T1 and T2, and they choose nothing.
"""
import argparse
import json
import re
from pathlib import Path

import numpy as np

from core.parallel import use_cores
from data.shards import read_split
from dist.ensemble import model_probabilities, raw_best_model
from dist.evaluate import evaluate, model_from_checkpoint

LEVELS = (0.990, 0.995, 0.996, 0.997)


def walls(run: Path) -> dict:
    return {r["epoch"]: r["seconds"]["wall"] for r in
            map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def run_curve(run: Path, images, labels) -> list[dict]:
    wall, points = walls(run), []
    for ckpt in sorted(run.glob("ckpt-e*-s00000.h5")):
        epoch = int(re.match(r"ckpt-e(\d+)", ckpt.name).group(1))
        model, _ = model_from_checkpoint(ckpt, raw=True)
        acc = evaluate(model, images, labels, "xent")["acc"]
        points.append({"epoch": epoch, "wall": wall[epoch], "test_acc": acc})
        print(f"{run.name} epoch {epoch:2d}  wall {wall[epoch]:7.1f} s  test {100 * acc:.2f}%",
              flush=True)
    return points


def ensemble_curve(folder: Path, snapshots: bool, images, labels) -> list[dict]:
    if snapshots:
        member = folder / "member-0"
        wall = walls(member)
        cycles = json.loads((member / "config.json").read_text())["schedule"]["cycles"]
        per = max(wall) // cycles
        models = [(member / f"snapshot-c{c:02d}.h5", wall[c * per]) for c in range(1, cycles + 1)]
    else:
        done, models = 0.0, []
        for member in sorted(folder.glob("member-*")):
            done += json.loads((member / "final.json").read_text())["wall_seconds"]
            models.append((raw_best_model(member), done))
    points, probas = [], []
    for k, (path, wall) in enumerate(models, 1):
        probas.append(model_probabilities(path, images))
        acc = float((np.mean(probas, axis=0).argmax(axis=1) == labels).mean())
        points.append({"models": k, "wall": wall, "test_acc": acc})
        print(f"{folder.name}: {k} model(s) at {wall:7.1f} s  test {100 * acc:.2f}%", flush=True)
    return points


def first_reached(points: list[dict]) -> dict:
    return {f"{100 * level:.1f}": next((p["wall"] for p in points if p["test_acc"] >= level), None)
            for level in LEVELS}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--ensemble")
    ap.add_argument("--snapshots", action="store_true")
    ap.add_argument("--data", default="/work/mnist.h5")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    images, labels, _ = read_split(args.data, "test")
    result = {}
    with use_cores(2):
        for run in args.runs:
            points = run_curve(Path(run), images, labels)
            result[run] = {"points": points, "reached_at_seconds": first_reached(points)}
        if args.ensemble:
            points = ensemble_curve(Path(args.ensemble), args.snapshots, images, labels)
            result[args.ensemble] = {"points": points, "reached_at_seconds": first_reached(points)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, r in result.items():
        print(Path(name).name, {k: (round(v) if v else "not reached")
                                for k, v in r["reached_at_seconds"].items()})


if __name__ == "__main__":
    main()
