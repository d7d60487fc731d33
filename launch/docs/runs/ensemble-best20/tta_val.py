"""Validation split ONLY: does averaging over 1-px shifts (test-time augmentation) help the
20-epoch ensemble? Run from the repository root, with the members in /work/runs/ens-best20:

    PYTHONPATH=. python launch/docs/runs/ensemble-best20/tta_val.py
"""
from pathlib import Path
import numpy as np
from data.prepare import ensure_dataset
from data.shards import read_split
from dist.evaluate import model_from_checkpoint, predict_scores, scores_to_proba

def shift(images, dy, dx):
    out = np.zeros_like(images)
    H, W = images.shape[1:]
    out[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        images[:, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out

images, labels, _ = read_split(ensure_dataset(quiet=True), "val", 0, 5000)
shifts = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
plain, tta = [], []
for m in range(7):
    model, ckpt = model_from_checkpoint(Path(f"/work/runs/ens-best20/member-{m}") / "best.h5")
    loss = ckpt.config["model"]["loss"]
    p = [scores_to_proba(predict_scores(model, shift(images, dy, dx)), loss) for dy, dx in shifts]
    plain.append(p[0]); tta.append(np.mean(p, axis=0))
    e = lambda q: int((q.argmax(1) != labels).sum())
    print(f"member {m}: errors plain {e(p[0])}, tta {e(tta[-1])}", flush=True)
for name, ps in (("plain", plain), ("tta", tta)):
    q = np.mean(ps, axis=0)
    nll = float(-np.log(q[np.arange(len(labels)), labels] + 1e-12).mean())
    print(f"ensemble {name}: errors {int((q.argmax(1) != labels).sum())}, log-loss {nll:.5f}")
