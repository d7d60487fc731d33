"""Validation split ONLY: do deskewed members (best-deskew, members 8+) help the 12-epoch
ensemble (members 0-7 of best)? The decision rule is in the README ("a fourth try").
Run from the repository root with the runs in /work/runs:  PYTHONPATH=. python THIS_FILE
"""
from pathlib import Path

import numpy as np

from data.prepare import ensure_dataset
from data.shards import read_split
from dist.evaluate import model_from_checkpoint, predict_scores, scores_to_proba

FOLDER = Path("/work/runs/ens-mixed")          # members 0-7: links to ens-best8's
TWENTY = Path("/work/runs/ens-best20")         # the 20-epoch members, for comparison only
images, labels, _ = read_split(ensure_dataset(quiet=True), "val", 0, 5000)
labels = labels.astype(np.int64)


def proba(folder: Path) -> np.ndarray:
    model, ckpt = model_from_checkpoint(folder / "best.h5")
    return scores_to_proba(predict_scores(model, images), ckpt.config["model"]["loss"])


def report(name: str, probas: list) -> None:
    mean = np.mean(probas, axis=0)
    nll = -np.log(np.maximum(mean[np.arange(len(labels)), labels], 1e-12)).mean()
    print(f"{name:<34} errors {int((mean.argmax(1) != labels).sum()):>3}   log-loss {nll:.5f}",
          flush=True)


best = [proba(FOLDER / f"member-{m}") for m in range(8)]
deskewed = [proba(f) for f in sorted(FOLDER.glob("member-*"), key=lambda f: int(f.name[7:]))
            if int(f.name[7:]) >= 8 and (f / "final.json").is_file()]
twenty = [proba(TWENTY / f"member-{m}") for m in range(7)]
for i, p in enumerate(best + deskewed):
    report(f"member {i} alone", [p])
wrong_best = np.array([p.argmax(1) != labels for p in best]).sum(axis=0) * 2 > len(best)
for i, p in enumerate(deskewed):
    wrong = p.argmax(1) != labels
    print(f"member {8 + i}: {wrong.sum()} errors, {(wrong & wrong_best).sum()} of them also wrong "
          f"for most best members (which get {wrong_best.sum()} wrong)")
report("best 0-7 (12 epochs)", best)
report(f"best 0-7 + deskew x{len(deskewed)}", best + deskewed)
report(f"deskew x{len(deskewed)} alone", deskewed)
report("20-epoch best 0-6 (comparison)", twenty)
report(f"20-epoch best 0-6 + deskew x{len(deskewed)}", twenty + deskewed)
