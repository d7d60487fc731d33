"""Validation split ONLY: the wide best member alone, and added to the 20-epoch ensemble.
Run from the repository root with the runs in /work/runs: PYTHONPATH=. python THIS_FILE
"""
from pathlib import Path
from data.prepare import ensure_dataset
from data.shards import read_split
from dist.ensemble import ensemble_accuracy
images, labels, _ = read_split(ensure_dataset(quiet=True), "val", 0, 5000)
base = [Path(f"/work/runs/ens-best20/member-{m}") for m in range(7)]
wide = Path("/work/runs/best-wide-s0")
for name, members in (("20-epoch 7", base), ("20-epoch 7 + wide", base + [wide])):
    r = ensemble_accuracy(members, images, labels)
    print(f"{name}: member errors {[round(5000 * (1 - a)) for a in r['members']]}, "
          f"ensemble errors {r['errors']['ensemble']}, log-loss {r['ensemble_nll']:.5f}", flush=True)
