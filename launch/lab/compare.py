"""Compare ensemble candidates on the validation split: errors, accuracy and log-loss.

    python -m launch.lab.compare runs/ens-best8 runs/ens-mixed             # two ensembles
    python -m launch.lab.compare runs/ens:0-11 runs/ens:0-13 runs/ens:0-15 --each
    python -m launch.lab.compare runs/ens-best20+runs/best-wide            # 7 members + one run

Each argument is one candidate: a set of trained runs whose probabilities are averaged, as
``dist.ensemble`` averages them (each run's ``best.h5``, the epoch its validation split chose).
A candidate is one or more parts joined by ``+``; a part is

    RUN_DIR               a run folder holding best.h5: one member
    ENSEMBLE_DIR          a dist.ensemble folder: all its member-<m>/ folders
    ENSEMBLE_DIR:0-7,12   members 0 to 7 and 12 of it

This is the tool for choosing between candidates *before* any test figure exists, so it reads
the validation split unless ``--split test`` is given explicitly. Every member must have been
trained with the same validation split (data.split_seed, data.val_size); the tool checks.
Per candidate: errors, accuracy and log-loss of the average, and how the members' errors
overlap (images wrong for every member, for most, for any). ``--each`` adds each member alone.
Each member is evaluated once, however many candidates share it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from data.errors import UserError
from data.prepare import ensure_dataset
from data.shards import read_split
from dist.checkpoint import load_checkpoint
from dist.ensemble import average_accuracy, member_probabilities
from dist.errors import ExpectedError


def member_numbers(text: str, spec: str) -> list[int]:
    """"0-7,12" -> [0, 1, ..., 7, 12]."""
    numbers = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not (lo.isdigit() and (not dash or hi.isdigit())) or (dash and int(hi) < int(lo)):
            raise ExpectedError(f"{spec}: {part.strip()!r} is not a member number or a range "
                                "like 0-7")
        numbers += range(int(lo), int(hi if dash else lo) + 1)
    return numbers


def candidate_members(spec: str) -> list[Path]:
    """The member run folders of one candidate (see the module docstring)."""
    members = []
    for part in spec.split("+"):
        folder, colon, chosen = part.partition(":")
        folder = Path(folder)
        if (folder / "best.h5").is_file() and not colon:
            members.append(folder)
            continue
        found = {int(p.name.split("-", 1)[1]): p for p in folder.glob("member-*")
                 if p.name.split("-", 1)[1].isdigit()}
        if not found:
            raise ExpectedError(f"{folder}: neither a run folder with best.h5 nor an ensemble "
                                "folder with member-<m>/ folders")
        for m in member_numbers(chosen, spec) if colon else sorted(found):
            if m not in found or not (found[m] / "best.h5").is_file():
                raise ExpectedError(f"{folder / f'member-{m}'}: no best.h5 (not trained, or "
                                    "not finished)")
            members.append(found[m])
    return members


def data_settings(members: list[Path]) -> tuple[str | None, int, int]:
    """(data.path, data.split_seed, data.val_size) of the members, which must share their
    validation split; the path is the first member's (``--data`` overrides it)."""
    settings = {}
    for folder in members:
        data = load_checkpoint(folder / "best.h5").config.get("data", {})
        settings[folder] = (data.get("path") or None, data.get("split_seed", 0),
                            data.get("val_size", 5000))
    (first, (path, *split)), *_ = settings.items()
    for folder, (_, *theirs) in settings.items():
        if theirs != split:
            raise ExpectedError(f"{folder}: trained with data.split_seed, data.val_size = "
                                f"{tuple(theirs)}, but {first} with {tuple(split)}: their "
                                "validation images differ")
    return path, *split


def compare(candidates: list[str], split: str, data: str | None, each: bool = False) -> list:
    """One result per candidate (and per member with ``each``), in the order given."""
    groups = {spec: candidate_members(spec) for spec in candidates}
    members = list(dict.fromkeys(m for group in groups.values() for m in group))
    path, split_seed, val_size = data_settings(members)
    if data is None and path and Path(path).is_file():
        data = path                    # where the members were trained; never prepared here
    images, labels, _ = read_split(ensure_dataset(data, quiet=True), split, split_seed, val_size)
    probas = {m: member_probabilities(m, images) for m in members}   # each member once
    rows = [(str(m), [m]) for m in members] if each else []
    rows += list(groups.items())
    return [{"candidate": name, "runs": [str(m) for m in group], "split": split,
             "images": len(labels), **average_accuracy([probas[m] for m in group], labels)}
            for name, group in rows]


def format_row(result: dict) -> str:
    e = result["errors"]
    return (f"{result['candidate']:<40} {len(result['runs']):>3} members  errors "
            f"{e['ensemble']:>4} of {result['images']}  acc {100 * result['ensemble']:.2f}%  log-loss "
            f"{result['ensemble_nll']:.5f}  (wrong for every member {e['by_every_member']}, "
            f"most {e['by_most_members']}, any {e['by_any_member']})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.lab.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+", metavar="CANDIDATE",
                        help="RUN_DIR, ENSEMBLE_DIR or ENSEMBLE_DIR:0-7,12, joined with +")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="val (the default) chooses; test only when you mean to look at "
                             "the test set, once per decision, after choosing on val")
    parser.add_argument("--data", default=None,
                        help="MNIST HDF5 file (default: the first member's data.path if it "
                             "exists, else $MPIGRAD_DATA or the per-user cache)")
    parser.add_argument("--each", action="store_true", help="also each member alone")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    if args.split == "test":
        print("note: --split test: these are test figures; choose candidates on --split val",
              file=sys.stderr, flush=True)
    try:
        results = compare(args.candidates, args.split, args.data, args.each)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for result in results:
        print(json.dumps(result) if args.json else format_row(result), flush=True)
    if not args.json and len(args.candidates) > 1:
        best = min(results[-len(args.candidates):], key=lambda r: r["ensemble_nll"])
        print(f"lowest {args.split} log-loss: {best['candidate']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
