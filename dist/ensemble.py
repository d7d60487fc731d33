"""Train K models in one MPI job and average their softmax outputs.

    mpirun -n 4 python -m dist.ensemble --members 4 --preset best   # 4 groups of 1 rank
    mpirun -n 4 python -m dist.ensemble --members 2 --preset best   # 2 groups of 2 ranks
    python -m dist.ensemble --members 3 --preset mlp                 # one process, in turn
    mpirun -n 2 python -m dist.ensemble --members best:6,best-pool:4 # members of two presets
    mpirun -n 2 python -m dist.ensemble --members 3 --ranks-per-member 2   # in turn, 2 ranks each

The ranks are split into groups (``MPI_Comm_Split``); each group is an ordinary data-parallel
trainer (``dist.train.main`` on the group's communicator) with its own seed, ``train.seed + m``
for member m, writing ``runs/<name>/member-<m>/``. ``--members K`` gives K members of the
``--preset``; ``--members best:6,best-pool:4`` gives members 0-5 of ``best`` and 6-9 of
``best-pool``: members of different networks may disagree more often, which is what an average
needs (for these two it did not pay off: launch/docs/results.md). With fewer ranks than members a
group trains several members one after another. ``--ranks-per-member R`` fixes the group size
instead: every member then trains on R ranks, so each one takes the wall time a single
`dist.train` on R ranks would (what a per-model time budget measures). The members still to
train are dealt out by the epochs they need, so that kept members do not leave a group idle
while another trains several; a half-trained member goes to a group of as many ranks as it
started on, and resumes bitwise. Since every member is world-size invariant, member m's weights
do not depend on how the ranks were grouped (up to the order of float sums).

Interrupted? Run the same command with ``--name <the ensemble's folder name>`` again: members
with a ``final.json`` are kept as they are, members with checkpoints resume from their newest
one (with the configuration they started with), the others start. Existing member folders must
come from member m's preset with seed ``train.seed + m`` and the same settings (``--set``) as
this command gives its members (checked before anything trains), so a member can also be
trained on its own, with every rank, and then combined:

    mpirun -n 2 python -m dist.train --preset best --set run.dir=runs/ens
        --set run.name=member-4 --set train.seed=4              (one command)
    mpirun -n 2 python -m dist.ensemble --members 5 --preset best --name ens

When all members are done, rank 0 averages the members' class probabilities (from each member's
``best.h5``, chosen on validation) on the validation and test sets and writes
``runs/<name>/ensemble.json`` (validation only with ``--set train.report_test=false``). Any
other argument is passed to ``dist.train`` unchanged.

Members trained with a moving average of the weights (``optim.ema_decay``) contribute the
average; ``--raw`` takes their raw weights instead, from the epoch whose raw weights did best
on validation (``member-<m>/best-raw.h5``, written from that epoch's kept checkpoint).

Snapshot ensembles (Huang et al. 2017, "Snapshot ensembles: train 1, get M for free"): with a
cyclic schedule each run writes a model file at the end of every cycle
(``member-<m>/snapshot-cCC.h5``), and ``--snapshots`` averages those instead of the members'
``best.h5``: M models for the price of one training each. ``--snapshots K`` takes the last K
of each member (early cycles' snapshots are weaker).

    mpirun -n 2 python -m dist.ensemble --members 1 --preset best --snapshots \
        --set schedule.kind=cyclic --set schedule.cycles=3 --set train.epochs=18
"""
from __future__ import annotations

if __name__ == "__main__":   # before the imports below (MPI starts in one): a stop signal
    from dist.stop import hold_signals   # meanwhile stops the job at its first step
    hold_signals()

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from data.hdf5 import open_mnist
from data.shards import read_split
from dist import train
from dist.checkpoint import (SNAPSHOT_GLOB, checkpoint_name, export_model, load_checkpoint,
                             normalized, resolve_checkpoint)
from dist.collective import agree, collectively, on_root, run_main
from dist.comm import Comm
from dist.config import DEFAULT_PRESET, load_config
from dist.errors import ExpectedError
from dist.evaluate import (add_tta_option, data_file, model_from_checkpoint, predict_scores,
                           scores_to_proba)


def model_probabilities(path: Path, images: np.ndarray,
                        fingerprint: str | None = None, tta: int = 0) -> np.ndarray:
    """Class probabilities (N, 10) of one model: a member's best.h5, or a snapshot. With
    `fingerprint`, a model trained on other data than `images` come from is refused; `tta`:
    test-time augmentation (dist.evaluate.predict_scores)."""
    model, ckpt = model_from_checkpoint(path, fingerprint)
    # Each member's own loss says how its outputs become probabilities (softmax or
    # normalised sigmoids): members of different presets can differ in it.
    return scores_to_proba(predict_scores(model, images, tta=tta), ckpt.config["model"]["loss"])


def member_probabilities(folder: Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 10) of a member's best.h5 (the epoch validation chose)."""
    return model_probabilities(folder / "best.h5", images)


def average_accuracy(probas: list[np.ndarray], labels: np.ndarray) -> dict:
    """Accuracy of each member and of their averaged probabilities, the average's log-loss,
    and how the errors overlap."""
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


def ensemble_accuracy(model_files: list[Path], images: np.ndarray, labels: np.ndarray,
                      fingerprint: str | None = None, tta: int = 0) -> dict:
    """Accuracy of each model (a member's best.h5, or a snapshot) and of their averaged
    probabilities; with `fingerprint`, only of models trained on that data."""
    return average_accuracy([model_probabilities(p, images, fingerprint, tta)
                             for p in model_files], labels)


def raw_best_model(folder: Path) -> Path:
    """A member's model without its moving average: `best-raw.h5`, written here, the raw
    weights of the epoch whose raw weights did best on validation (the first such epoch, as
    dist.train picks best.h5), from that epoch's kept checkpoint. What best.h5 would have been
    with optim.ema_decay = 0, since the average never changes the training itself. A member
    without an average has no raw_val_acc in its metrics: its best.h5 is raw already."""
    metrics = folder / "metrics.jsonl"
    try:
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        scored = {int(r["epoch"]): float(r["raw_val_acc"]) for r in records
                  if r.get("raw_val_acc") is not None}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ExpectedError(f"{metrics}: cannot read each epoch's raw_val_acc, which --raw "
                            f"needs ({getattr(err, 'strerror', None) or err})") from None
    if not scored:
        return folder / "best.h5"
    epoch = min(e for e, acc in scored.items() if acc == max(scored.values()))
    source = folder / checkpoint_name(epoch, 0)
    if not source.is_file():
        raise ExpectedError(f"{source}: not kept, and --raw needs it (epoch {epoch}'s raw "
                            "weights did best on validation; keep more with run.keep_last)")
    export_model(source, folder / "best-raw.h5", raw=True)
    return folder / "best-raw.h5"


def model_files(folder: Path, snapshots: int | None, raw: bool = False) -> list[Path]:
    """The models member `folder` contributes: its best.h5 (best-raw.h5 with `raw`), or with
    `snapshots` its cycle-end snapshots (the last `snapshots` of them; 0 = all)."""
    if snapshots is None:
        return [raw_best_model(folder) if raw else folder / "best.h5"]
    found = sorted(folder.glob(SNAPSHOT_GLOB))
    if not found:
        raise ExpectedError(f"{folder}: no snapshots ({SNAPSHOT_GLOB}); snapshots are written "
                            "by runs with schedule.kind = 'cyclic'")
    return found[-snapshots:] if snapshots else found


def member_state(folder: Path) -> str:
    """'done' (final.json written), 'started' (has checkpoints) or 'new'."""
    if (folder / "final.json").is_file():
        return "done"
    return "started" if any(folder.glob("ckpt-e*-s*.h5")) else "new"


# Settings that do not change the weights a member ends with: where it runs and writes, how
# often and whether it reports the test set, where the data file lives; and its seed, which is
# checked on its own.
NOT_SHAPING = ("run.", "data.path", "data.source", "train.eval_test_every", "train.report_test",
               "train.seed")


def _flatten(table: dict, prefix: str = "") -> dict:
    """{"train": {"epochs": 12}} -> {"train.epochs": 12}"""
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def member_mismatch(folder: Path, cfg, seed: int) -> str | None:
    """Why an existing member folder does not belong to this ensemble (None if it does): it
    must have been trained from the same preset with seed train.seed + m, and with the same
    settings as this ensemble's members (`cfg`: its preset with this command's --set), up to
    the NOT_SHAPING ones. A folder copied or trained by hand (one `dist.train` job per member,
    all ranks each) is kept when it fits."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
        found = (config["preset"], config["train"]["seed"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path}: cannot read the member's preset and train.seed ({err})"
    if found != (cfg.preset, seed):
        return (f"{path}: preset {found[0]!r} with train.seed {found[1]}, but this member "
                f"needs preset {cfg.preset!r} with train.seed {seed}")
    try:        # the member's config as this version reads it: keys added since at their defaults
        resolved = load_config(base=config).to_dict()
    except ExpectedError as err:
        return f"{path}: {err}"
    has, wants = _flatten(resolved), _flatten(cfg.to_dict())
    # Layers as dist.train saves them, every default filled in: also in a folder written
    # before a layer key existed (train.main names a bad layer).
    for settings in (wants, has):
        if isinstance(settings.get("model.layers"), list):
            settings["model.layers"] = normalized(settings["model.layers"])
    for key, value in wants.items():
        found_value = has.get(key, "(missing)")
        if key.startswith(NOT_SHAPING) or found_value == value:
            continue
        if key == "model.layers" and isinstance(found_value, list):
            diff = next((i for i, (a, b) in enumerate(zip(found_value, value)) if a != b),
                        min(len(found_value), len(value)))
            return (f"{path}: model.layers differ from this ensemble's at layer {diff} "
                    f"({len(found_value)} layers against {len(value)})")
        return f"{path}: {key} is {found_value!r}, but this ensemble's members have {value!r}"
    return None


def member_progress(folder: Path, epochs: int) -> tuple[int, int | None]:
    """(epochs the member still has to train, ranks it was trained on so far): (0, None) when
    done, (epochs, None) when new, and from its newest checkpoint when started."""
    state = member_state(folder)
    if state != "started":
        return (0 if state == "done" else epochs), None
    try:
        with h5py.File(resolve_checkpoint(folder), "r") as f:
            done, ranks = int(f.attrs["epoch"]), int(f.attrs["world_size"])
    except (OSError, KeyError, ValueError):
        return epochs, None     # unreadable: resuming it will say so, naming the file
    return max(1, epochs - done), ranks


def deal_members(left: dict[int, int], sizes: list[int], trained_on=None) -> list[list[int]]:
    """Members still to train (left[m] > 0 epochs) dealt to groups of `sizes[g]` ranks.
    Started members first: each to a group of as many ranks as it was trained on so far
    (`trained_on[m]`), so that it resumes bitwise as if never interrupted. Then the new ones,
    longest first, each to the group with the least work so far (the classic greedy for
    balancing loads). Each group's members in ascending order; finished members go to nobody."""
    trained_on = trained_on or {}
    loads, plan = [0] * len(sizes), [[] for _ in sizes]
    for m in sorted((m for m, e in left.items() if e),
                    key=lambda m: (m not in trained_on, -left[m], m)):
        fits = [g for g, n in enumerate(sizes) if n == trained_on.get(m)] or range(len(sizes))
        g = min(fits, key=lambda g: (loads[g], g))
        loads[g] += left[m]
        plan[g].append(m)
    return [sorted(members) for members in plan]


def member_presets(members: str, preset: str | None) -> list[str]:
    """The preset of each member, from ``--members``: "K" (K members of ``preset``, or of the
    default preset) or "NAME:K,NAME:K,..." (members numbered in that order)."""
    if members.strip().isdigit():
        count = int(members)
        if count < 1:
            raise ExpectedError(f"--members {members}: must be >= 1", everywhere=True)
        return [preset or DEFAULT_PRESET] * count
    if preset:
        raise ExpectedError(f"--preset {preset}: with --members {members} the presets are "
                            "named in --members", everywhere=True)
    presets = []
    for part in members.split(","):
        name, sep, count = part.strip().partition(":")
        if not (sep and name and count.strip().isdigit() and int(count) >= 1):
            raise ExpectedError(f"--members {members}: {part.strip()!r} is not NAME:COUNT with "
                                "COUNT >= 1 (or give one number)", everywhere=True)
        presets += [name] * int(count)
    return presets


# Settings every member must share: members are averaged image by image, so they must see the
# same validation and test images, and they live in one folder with consecutive seeds.
SHARED_SETTINGS = (("run", "dir"), ("train", "seed"), ("data", "path"), ("data", "split_seed"),
                   ("data", "val_size"))


def shared_setting_conflict(configs) -> str | None:
    """Why these configs cannot be members of one ensemble (None if they can)."""
    first, *others = configs
    for cfg in others:
        for section, key in SHARED_SETTINGS:
            ours, theirs = getattr(getattr(first, section), key), getattr(getattr(cfg, section), key)
            if ours != theirs:
                return (f"presets {first.preset!r} and {cfg.preset!r} differ in {section}.{key} "
                        f"({ours!r} and {theirs!r}): set it for both with --set")
    return None


def member_configs(world: Comm, presets: list[str], config_file, overrides) -> dict:
    """Each distinct preset's resolved config, after checking they agree on SHARED_SETTINGS."""
    configs = {name: collectively(world, load_config, name, config_file, overrides)
               for name in dict.fromkeys(presets)}
    conflict = shared_setting_conflict(list(configs.values()))
    agree(world, conflict is None, conflict or "")
    return configs


@dataclass
class Ensemble:
    """What every rank knows about the ensemble once the command line is checked."""
    args: argparse.Namespace   # this command's own options (--members, --snapshots, ...)
    train_argv: list[str]      # everything else, passed on to dist.train
    presets: list[str]         # member m's preset
    configs: dict              # each preset's resolved config
    label: str                 # the preset, or --members when it names several
    folder: Path               # runs/<name>: member-<m>/ and ensemble.json
    start: float               # perf_counter at the start, for wall_seconds

    @property
    def cfg(self):
        """Member 0's config, for the settings all members share (SHARED_SETTINGS)."""
        return self.configs[self.presets[0]]

    @property
    def mixed(self) -> bool:
        """Presets named in --members ("best:6,best-pool:4"), not one --preset."""
        return not self.args.members.strip().isdigit()

    def member_dir(self, m: int) -> Path:
        return self.folder / f"member-{m}"

    def seed(self, m: int) -> int:
        return self.cfg.train.seed + m


def parse_args(argv) -> tuple[argparse.Namespace, list[str]]:
    """This command's options, and the rest of the command line (for dist.train)."""
    parser = train.ArgumentParser(prog="python -m dist.ensemble", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", required=True, metavar="K | NAME:K,NAME:K",
                        help="number of models K (of --preset), or models per preset")
    parser.add_argument("--name", default="", help="run folder name (default: a timestamp)")
    parser.add_argument("--ranks-per-member", type=int, default=0, metavar="R",
                        help="ranks in each member's group (default: the ranks spread over "
                             "the members, at least one each)")
    parser.add_argument("--raw", action="store_true",
                        help="members trained with a moving average: average their raw "
                             "weights instead (each member's best-raw.h5, written on the way)")
    parser.add_argument("--snapshots", type=int, nargs="?", const=0, metavar="K",
                        help="average each member's cycle-end snapshots (schedule.kind = "
                             "'cyclic') instead of its best.h5; K: only the last K")
    add_tta_option(parser)
    return parser.parse_known_args(argv)


def check_options(world: Comm, args) -> None:
    """The options that make sense only in some combinations (every rank, together)."""
    per_member = args.ranks_per_member
    # The folder is run.dir/<name>: a name with a slash, "." or ".." would write elsewhere.
    agree(world, args.name == "" or ("/" not in args.name and args.name not in (".", "..")),
          f"--name {args.name}: must be a plain folder name (use --set run.dir=... for the "
          f"parent)")
    agree(world, per_member == 0 or (per_member > 0 and world.size % per_member == 0),
          f"--ranks-per-member {per_member}: must divide the job's {world.size} ranks")
    agree(world, not (args.raw and args.snapshots is not None),
          "--raw with --snapshots: snapshots are saved as the run's model; train the "
          "cyclic run with optim.ema_decay = 0 to have raw snapshots")
    agree(world, args.snapshots is None or args.snapshots >= 0,
          f"--snapshots {args.snapshots}: must be >= 0 (0 or nothing = all)")


def check_snapshots(world: Comm, configs: dict) -> None:
    """--snapshots needs every preset to write snapshots: a cyclic schedule."""
    plain = next((c for c in configs.values() if c.schedule.kind != "cyclic"), None)
    agree(world, plain is None, "" if plain is None else (
        f"--snapshots: preset {plain.preset!r} has schedule.kind={plain.schedule.kind!r}; "
        "snapshots come from --set schedule.kind=cyclic --set schedule.cycles=M"))


def configure(world: Comm, argv) -> Ensemble:
    """The command line and every member's config, checked on every rank before anything
    trains; and the ensemble's folder (its --name, else a timestamp rank 0 chose)."""
    start = time.perf_counter()
    args, train_argv = parse_args(argv)
    check_options(world, args)
    preset_args = train.parse_args(train_argv)
    agree(world, not preset_args.resume, "--resume: resume each member with dist.train instead")
    presets = member_presets(args.members, preset_args.preset)
    mixed = not args.members.strip().isdigit()   # presets named in --members
    agree(world, not (mixed and preset_args.config),
          f"--config {preset_args.config}: give presets in --members, or one --config")
    configs = member_configs(world, presets, preset_args.config, preset_args.set)
    if args.snapshots is not None:
        check_snapshots(world, configs)
    cfg = configs[presets[0]]
    label = args.members if mixed else cfg.preset
    name = world.bcast(args.name or f"ensemble-{label.replace(':', '').replace(',', '-')}-"
                                    f"{time.strftime('%Y%m%d-%H%M%S')}")
    return Ensemble(args, train_argv, presets, configs, label, Path(cfg.run.dir) / name, start)


def check_kept_members(world: Comm, ens: Ensemble) -> None:
    """Member folders that exist already must belong to this ensemble. Checked by rank 0 before
    any group trains, so that a mistake ends the job now and not after an hour of training."""
    problems = [f"member {m}: {why}" for m in range(len(ens.presets))
                if member_state(ens.member_dir(m)) != "new"
                and (why := member_mismatch(ens.member_dir(m), ens.configs[ens.presets[m]],
                                            ens.seed(m)))] if world.is_root else []
    agree(world, not problems, problems[0] if problems else "")


def my_group(world: Comm, ens: Ensemble) -> tuple[Comm, list[int]]:
    """Split the ranks into groups (contiguous blocks of ranks) and deal them the members still
    to train. Rank 0 reads how many epochs each member still needs (kept members none,
    half-trained ones fewer), so that one group is not left with several members while the
    others sit idle. (This group's communicator, the members it trains)"""
    per_member = ens.args.ranks_per_member
    groups = min(len(ens.presets), world.size // per_member if per_member else world.size)
    group = world.rank * groups // world.size
    comm = world.split(group)   # threads per rank as in the whole job, see Comm.split
    progress = world.bcast({m: member_progress(ens.member_dir(m),
                                               ens.configs[ens.presets[m]].train.epochs)
                            for m in range(len(ens.presets))} if world.is_root else None)
    left = {m: e for m, (e, _) in progress.items()}
    sizes = [sum(1 for r in range(world.size) if r * groups // world.size == g)
             for g in range(groups)]
    plan = deal_members(left, sizes, {m: n for m, (_, n) in progress.items() if n})
    if world.is_root:
        for m in (m for m, e in left.items() if not e):
            print(f"member {m}: already trained, kept ({ens.member_dir(m)})", flush=True)
        if groups > 1:
            print(f"{groups} groups of ranks train members " + "; ".join(
                ", ".join(map(str, members)) or "none" for members in plan), flush=True)
    return comm, plan[group]


def member_argv(comm: Comm, ens: Ensemble, m: int) -> list[str]:
    """dist.train's command line for member m: resume it, or start it with its seed and folder.
    The group's rank 0 looks at the folder and tells the others, so that they agree even where
    the run folder is not on a shared file system."""
    state = comm.bcast(member_state(ens.member_dir(m)) if comm.is_root else None)
    if state == "started":
        return ["--resume", str(ens.member_dir(m))]
    return [*ens.train_argv, *(["--preset", ens.presets[m]] if ens.mixed else []),
            "--set", f"train.seed={ens.seed(m)}",
            "--set", f"run.dir={ens.folder}", "--set", f"run.name=member-{m}"]


def train_members(world: Comm, ens: Ensemble) -> int:
    """Every group trains its members, one after another (``dist.train.main`` on the group's
    communicator). A user error in a member ends every group; a stop signal (dist/stop.py)
    ends each group after its member's checkpoint. Returns the signal's exit code, else 0."""
    comm, members = my_group(world, ens)
    error, stopped = None, 0
    for m in members:
        try:
            stopped = train.main(comm, member_argv(comm, ens, m))
        except ExpectedError as err:
            if not err.everywhere:
                raise  # only this rank knows: run_main aborts the job
            error = f"member {m}: {err}"
            break
        if stopped:
            break
    agree(world, error is None, error or "")
    return max(world.allgather(stopped))


def combine(ens: Ensemble, ranks: int) -> None:
    """Rank 0: average the members' models on the validation split (and the test split, with
    train.report_test), write ensemble.json and say the figure."""
    cfg = ens.cfg
    data_path = data_file(cfg.data.path)   # the default location if that path is not here
    fingerprint = open_mnist(data_path).fingerprint
    files = [path for m in range(len(ens.presets))
             for path in model_files(ens.member_dir(m), ens.args.snapshots, ens.args.raw)]
    # Every model loads and was trained on this data before any figure is computed: one line
    # naming the file and the field, and no ensemble.json from a bad file.
    for path in files:
        load_checkpoint(path, expect_fingerprint=fingerprint, resumable=False)
    result = {"members": len(ens.presets), "ranks": ranks, "preset": ens.label,
              "raw": ens.args.raw, "tta": ens.args.tta,
              "presets": [ens.configs[p].preset for p in ens.presets],
              "models": [str(path.relative_to(ens.folder)) for path in files],
              "wall_seconds": time.perf_counter() - ens.start}
    # Runs that decide something see the validation split only (train.report_test).
    for split in ("val", "test") if cfg.train.report_test else ("val",):
        images, labels, _ = read_split(data_path, split, cfg.data.split_seed, cfg.data.val_size)
        if len(labels):
            result[split] = ensemble_accuracy(files, images, labels, fingerprint, ens.args.tta)
    write_result(ens.folder / "ensemble.json", result)
    split = "test" if "test" in result else "val"
    shown = result.get(split, {"ensemble": float("nan"), "members": []})
    print(f"ensemble of {len(files)} models: {split} accuracy {100 * shown['ensemble']:.2f}% "
          f"(models {', '.join(f'{100 * a:.2f}%' for a in shown['members'])}); "
          f"{ens.folder / 'ensemble.json'}", flush=True)


def write_result(path: Path, result: dict) -> None:
    """Write ensemble.json atomically (a temporary file, then a rename): a full disk leaves the
    previous one, if any, and says so in one line."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = "the previous one is kept" if path.exists() else "nothing written"
        raise ExpectedError(f"{path}: cannot write ({err.strerror or err}); {kept}; the members "
                            "are trained: free space and run the same command again") from None


def main(world: Comm, argv=None) -> int:
    ens = configure(world, argv)
    check_kept_members(world, ens)
    stopped = train_members(world, ens)
    if stopped:       # the same command again continues every member where it stopped
        return stopped
    on_root(world, combine, ens, world.size)   # the other ranks sleep meanwhile
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
