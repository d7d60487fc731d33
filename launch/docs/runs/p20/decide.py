"""Apply protocol-20's rules D1 (EMA) and D2 (elastic distortion) to the decision runs.

    python launch/docs/runs/p20/decide.py /work/runs/p20/p20-B /work/runs/p20/p20-E2

Reads only each member's metrics.jsonl: the validation figures of the epoch the run ends with
(launch/docs/protocol-20.md, section 1), for the averaged weights (val_*) and the raw ones
(raw_val_*). No test figure is read (the runs had train.report_test = false).
"""
import json
import sys
from pathlib import Path

VAL = 5000


def last_epoch(member: Path) -> dict:
    return [json.loads(line) for line in (member / "metrics.jsonl").read_text().splitlines()][-1]


def figures(ensemble: Path, averaged: bool) -> list[tuple[int, float]]:
    """(validation errors, validation log-loss) of each member's last epoch."""
    key = "" if averaged else "raw_"
    rows = [last_epoch(m) for m in sorted(ensemble.glob("member-*"))]
    return [(round((1 - r[key + "val_acc"]) * VAL), r[key + "val_loss"]) for r in rows]


def mean(xs):
    return sum(xs) / len(xs)


def main(baseline: Path, *candidates: Path):
    ema, raw = figures(baseline, True), figures(baseline, False)
    print(f"D1 on {baseline.name}: errors averaged {[e for e, _ in ema]} raw {[e for e, _ in raw]};"
          f" log-loss averaged {[round(l, 5) for _, l in ema]} raw {[round(l, 5) for _, l in raw]}")
    use_ema = (mean([l for _, l in ema]) < mean([l for _, l in raw])
               and mean([e for e, _ in ema]) <= mean([e for e, _ in raw]))
    print(f"D1: mean errors {mean([e for e, _ in ema]):.2f} averaged vs {mean([e for e, _ in raw]):.2f}"
          f" raw; mean log-loss {mean([l for _, l in ema]):.5f} vs {mean([l for _, l in raw]):.5f}"
          f" -> {'EMA adopted' if use_ema else 'raw weights (ema_decay = 0)'}")
    base = figures(baseline, use_ema)
    b_err, b_loss = mean([e for e, _ in base]), mean([l for _, l in base])
    qualifying = []
    for folder in candidates:
        f = figures(folder, use_ema)
        err, loss = mean([e for e, _ in f]), mean([l for _, l in f])
        ok = err <= b_err - 3.0 or (err <= b_err and loss <= 0.9 * b_loss)
        print(f"D2: {folder.name} errors {[e for e, _ in f]} mean {err:.2f} (baseline {b_err:.2f}),"
              f" log-loss mean {loss:.5f} (baseline {b_loss:.5f}, -10% = {0.9 * b_loss:.5f})"
              f" -> {'qualifies' if ok else 'does not qualify'}")
        if ok:
            qualifying.append((err, loss, folder.name))
    print("D2: " + (f"{min(qualifying)[2]} adopted" if qualifying else
                    "no candidate qualifies: elastic distortion stays off"))


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:]))
