"""Train K models in one MPI job and average their softmax outputs.

    mpirun -n 4 python -m dist.ensemble --members 4 --preset best   # 4 groups of 1 rank
    mpirun -n 4 python -m dist.ensemble --members 2 --preset best   # 2 groups of 2 ranks
    python -m dist.ensemble --members 3 --preset mlp                 # one process, in turn

The ranks are split into groups (``MPI_Comm_Split``); each group is an ordinary data-parallel
trainer (``dist.train.main`` on the group's communicator) with its own seed, ``train.seed + m``
for member m, writing ``runs/<name>/member-<m>/``. With fewer ranks than members a group trains
several members one after another. Since every member is world-size invariant, member m's
weights do not depend on how the ranks were grouped.

Interrupted? Run the same command with ``--name <the ensemble's folder name>`` again: members
with a ``final.json`` are kept as they are, members with checkpoints resume from their newest
one (with the configuration they started with), the others start. Existing member folders must
come from the same preset with seed ``train.seed + m`` (checked before anything trains), so a
member can also be trained on its own, with every rank, and then combined:

    mpirun -n 2 python -m dist.train --preset best --set run.dir=runs/ens
        --set run.name=member-4 --set train.seed=4              (one command)
    mpirun -n 2 python -m dist.ensemble --members 5 --preset best --name ens

When all members are done, rank 0 averages the members' class probabilities (from each member's
``best.h5``, chosen on validation) on the validation and test sets and writes
``runs/<name>/ensemble.json``. Any other argument is passed to ``dist.train`` unchanged.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from data.prepare import ensure_dataset
from data.shards import read_split
from dist import train
from dist.comm import Comm, ExpectedError, run_main
from dist.config import load_config
from dist.evaluate import model_from_checkpoint, predict_scores, scores_to_proba


def ensemble_accuracy(member_dirs: list[Path], images: np.ndarray, labels: np.ndarray,
                      loss: str) -> dict:
    """Accuracy of each member's best.h5 and of their averaged probabilities."""
    probas = []
    for folder in member_dirs:
        model, _ = model_from_checkpoint(folder / "best.h5")
        probas.append(scores_to_proba(predict_scores(model, images), loss))
    labels = labels.astype(np.int64)
    mean = np.mean(probas, axis=0)
    wrong = np.array([p.argmax(1) != labels for p in probas])   # (members, images)
    return {"members": [float((p.argmax(1) == labels).mean()) for p in probas],
            "ensemble": float((mean.argmax(1) == labels).mean()),
            "ensemble_nll": float(-np.log(np.maximum(mean[np.arange(len(labels)), labels],
                                                     1e-12)).mean()),
            # Will more members help? Not with images that most members already get wrong.
            "errors": {"ensemble": int((mean.argmax(1) != labels).sum()),
                       "by_every_member": int(wrong.all(axis=0).sum()),
                       "by_most_members": int((2 * wrong.sum(axis=0) > len(probas)).sum()),
                       "by_any_member": int(wrong.any(axis=0).sum())}}


def member_state(folder: Path) -> str:
    """'done' (final.json written), 'started' (has checkpoints) or 'new'."""
    if (folder / "final.json").is_file():
        return "done"
    return "started" if any(folder.glob("ckpt-e*-s*.h5")) else "new"


def member_mismatch(folder: Path, preset: str, seed: int) -> str | None:
    """Why an existing member folder does not belong to this ensemble (None if it does): it
    must have been trained from the same preset with seed train.seed + m. A folder copied or
    trained by hand (one `dist.train` job per member, all ranks each) is kept when it fits."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
        found = (config["preset"], config["train"]["seed"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path}: cannot read the member's preset and train.seed ({err})"
    if found != (preset, seed):
        return (f"{path}: preset {found[0]!r} with train.seed {found[1]}, but this member "
                f"needs preset {preset!r} with train.seed {seed}")
    return None


def main(world: Comm, argv=None) -> None:
    parser = train.ArgumentParser(prog="python -m dist.ensemble", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, required=True, help="number of models K")
    parser.add_argument("--name", default="", help="run folder name (default: a timestamp)")
    args, train_argv = parser.parse_known_args(argv)
    world.agree(args.members >= 1, f"--members {args.members}: must be >= 1")
    preset_args = train.parse_args(train_argv)
    world.agree(not preset_args.resume, "--resume: resume each member with dist.train instead")
    cfg = train.collectively(world, load_config, preset_args.preset, preset_args.config,
                             preset_args.set)
    name = world.bcast(args.name or f"ensemble-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    folder = Path(cfg.run.dir) / name

    # Member folders that exist already must belong to this ensemble. Checked by rank 0 before
    # any group trains, so that a mistake ends the job now and not after an hour of training.
    problems = [f"member {m}: {why}" for m in range(args.members)
                if member_state(folder / f"member-{m}") != "new"
                and (why := member_mismatch(folder / f"member-{m}", cfg.preset,
                                            cfg.train.seed + m))] if world.is_root else []
    world.agree(not problems, problems[0] if problems else "")

    groups = min(args.members, world.size)
    group = world.rank * groups // world.size          # contiguous blocks of ranks
    comm = world.split(group)  # threads per rank as in the whole job, see Comm.split
    error = None
    for member in range(group, args.members, groups):
        member_dir = folder / f"member-{member}"
        # The group's rank 0 looks at the folder and tells the others, so that they agree
        # even where the run folder is not on a shared file system.
        state = comm.bcast(member_state(member_dir) if comm.is_root else None)
        if state == "done":
            if comm.is_root:
                print(f"member {member}: already trained, kept ({member_dir})", flush=True)
            continue
        if state == "started":
            member_argv = ["--resume", str(member_dir)]
        else:
            member_argv = [*train_argv, "--set", f"train.seed={cfg.train.seed + member}",
                           "--set", f"run.dir={folder}", "--set", f"run.name=member-{member}"]
        try:
            train.main(comm, member_argv)
        except ExpectedError as err:
            if not err.everywhere:
                raise  # only this rank knows: run_main aborts the job
            error = f"member {member}: {err}"
            break
    world.agree(error is None, error or "")

    def combine() -> None:
        data_path = ensure_dataset(cfg.data.path or None, quiet=True)
        members = [folder / f"member-{m}" for m in range(args.members)]
        result = {"members": args.members, "ranks": world.size, "preset": cfg.preset}
        for split in ("val", "test"):
            images, labels, _ = read_split(data_path, split, cfg.data.split_seed,
                                           cfg.data.val_size)
            if len(labels):
                result[split] = ensemble_accuracy(members, images, labels, cfg.model.loss)
        (folder / "ensemble.json").write_text(json.dumps(result, indent=2) + "\n")
        test = result["test"]
        print(f"ensemble of {args.members}: test accuracy {100 * test['ensemble']:.2f}% "
              f"(members {', '.join(f'{100 * a:.2f}%' for a in test['members'])}); "
              f"{folder / 'ensemble.json'}", flush=True)

    train.on_root(world, combine)


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
