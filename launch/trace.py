"""A run's timeline.json read back: each rank's time per phase, its wait, the straggler.

    python -m launch.trace runs/<name>            # the table and the verdict
    python -m launch.report runs/<name>           # the same, plus timeline.png among the figures

dist/timeline.py writes the trace (train with ``--set run.timeline=8``). A collective makes
every rank leave it together, so whose work was slow is not seen in how long each rank's
step took -- those are all equal -- but in when each rank *arrived* at each collective:
dist/timeline.py marks a "wait for rank q" span in every rank that arrived before the last.
Here each rank's lateness at a collective is its arrival minus the latest arrival of the
others (when positive): the time the job spent waiting for that rank alone, added up over
the step. A rank is named the straggler when it is the latest in at least ``STRAGGLER_STEPS``
of the recorded steps and its work is clearly longer than the others': its median lateness
is at least ``STRAGGLER_EXCESS`` of the others' work in a step (their step less their wait).
Medians, because a rank that lost its core once to another process is no straggler;
otherwise "no straggler".
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import median

from dist.errors import ExpectedError

PHASES = ("data", "forward", "backward", "gradient sum", "update", "gather")
STRAGGLER_EXCESS = 0.5     # one rank's work is 1.5 times the others' or more ...
STRAGGLER_STEPS = 3 / 4    # ... which is the latest in at least this share of the steps


def read_trace(path: Path) -> dict:
    """timeline.json, checked to be mpigrad's trace."""
    if not path.is_file():
        raise ExpectedError(f"{path}: no such file (train with --set run.timeline=8)")
    try:
        trace = json.loads(path.read_text())
        trace["otherData"]["mpigrad"]["ranks"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExpectedError(f"{path}: not a timeline of dist.train ({err})") from None
    return trace


def analyse(trace: dict) -> dict:
    """Per rank: milliseconds per step of each phase and of waiting in collectives, its
    lateness; and the straggler (None for an even run)."""
    info = trace["otherData"]["mpigrad"]
    spans = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    steps = sorted({e["args"]["step"] for e in spans if e["cat"] == "step"})
    per_rank = {}
    arrivals = defaultdict(dict)           # (step, track, n) -> rank -> arrival (us)
    for r in info["ranks"]:
        rank = r["rank"]
        mine = [e for e in spans if e["pid"] == rank and e["tid"] == 0]
        phase_us = defaultdict(float)
        for e in mine:
            if e["cat"] in ("phase", "collective") and e["name"] in PHASES:
                phase_us[e["name"]] += e["dur"]
        count = defaultdict(int)
        meeting = [e for e in spans if e["pid"] == rank and e["cat"] in ("collective", "bucket")]
        for e in sorted(meeting, key=lambda e: e["ts"]):
            key = e["args"]["step"], e["tid"]        # the n-th meeting of a step on a track
            arrivals[key + (count[key],)][rank] = e["ts"]
            count[key] += 1
        n = max(len(steps), 1)
        per_rank[rank] = {
            "host": r["host"],
            "step_ms": sum(e["dur"] for e in mine if e["cat"] == "step") / n / 1e3,
            "phases_ms": {p: phase_us[p] / n / 1e3 for p in PHASES},
            "wait_ms": sum(e["dur"] for e in mine if e["cat"] == "wait") / n / 1e3,
            "late_ms": defaultdict(float)}        # step -> ms the others waited for it
    for (step, _, _), at in arrivals.items():
        if len(at) < 2 or len(at) < len(per_rank):
            continue
        for rank, t in at.items():
            others = max(u for q, u in at.items() if q != rank)
            if t > others:
                per_rank[rank]["late_ms"][step] += (t - others) / 1e3
    uncertainty_ms = max(r["clock_uncertainty_us"] for r in info["ranks"]) / 1e3
    step_ms = median(e["dur"] / 1e3 for e in spans if e["cat"] == "step" and e["pid"] == 0) \
        if steps else 0.0
    latest = [max(per_rank, key=lambda q: per_rank[q]["late_ms"][step]) for step in steps]
    for rank, r in per_rank.items():
        r["latest_in_steps"] = latest.count(rank)
        r["late_ms"] = median(r["late_ms"][step] for step in steps) if steps else 0.0
    straggler = None
    if len(per_rank) > 1 and steps:
        rank = max(per_rank, key=lambda q: per_rank[q]["late_ms"])
        late = per_rank[rank]
        others_work = median(r["step_ms"] - r["wait_ms"] for q, r in per_rank.items()
                             if q != rank)
        if late["late_ms"] >= max(STRAGGLER_EXCESS * others_work, 3 * uncertainty_ms) and \
                late["latest_in_steps"] >= STRAGGLER_STEPS * len(steps):
            straggler = {"rank": rank, "host": late["host"], "lost_ms_per_step": late["late_ms"],
                         "share_of_step": late["late_ms"] / step_ms}
    return {"steps": steps, "update": info["update"], "uncertainty_ms": uncertainty_ms,
            "step_ms": step_ms, "ranks": per_rank, "straggler": straggler}


def summary_lines(result: dict) -> list[str]:
    """The table of ranks and the verdict, as printed."""
    steps = result["steps"]
    head = (f"timeline: steps {steps[0]}-{steps[-1]}, {len(result['ranks'])} rank(s), "
            f"{result['update']} update, clocks aligned within "
            f"{result['uncertainty_ms'] * 1e3:.0f} us; ms per step:") if steps else \
        "timeline: no complete step recorded"
    lines = [head, f"  {'rank':<5}{'host':<14}{'step':>7}" + "".join(f"{p:>14}" for p in PHASES)
             + f"{'waiting':>10}"]
    for rank, r in sorted(result["ranks"].items()):
        lines.append(f"  {rank:<5}{r['host'][:13]:<14}{r['step_ms']:>7.1f}"
                     + "".join(f"{r['phases_ms'][p]:>14.1f}" for p in PHASES)
                     + f"{r['wait_ms']:>10.1f}")
    s = result["straggler"]
    if s:
        lines.append(f"straggler: rank {s['rank']} on {s['host']}: the others wait for it at the "
                     f"collectives; the job loses {s['lost_ms_per_step']:.1f} ms a step to it "
                     f"({100 * s['share_of_step']:.0f}% of the step)")
    else:
        lines.append("no straggler: no rank's work before the collectives is clearly longer "
                     "than the others'")
    return lines


COLOURS = {"data": "tab:olive", "forward": "tab:blue", "backward": "tab:orange",
           "gradient sum": "tab:red", "update": "tab:green", "gather": "tab:purple",
           "batch-norm sum": "tab:pink", "validation": "tab:gray", "checkpoint": "tab:brown",
           "wait": "black", "bucket": "tab:red"}


def plot_timeline(trace: dict, path: Path, title: str, steps: int = 3) -> None:
    """The first ``steps`` recorded steps, one band per rank: its phases on the main track,
    its model copies' layers, each gradient bucket's reduction, and its waits hatched."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    info = trace["otherData"]["mpigrad"]
    spans = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    shown = sorted({e["args"]["step"] for e in spans if e["cat"] == "step"})[:steps]
    spans = [e for e in spans if e["args"].get("step") in shown and e["cat"] != "step"]
    if not spans:
        raise ExpectedError("the timeline holds no complete step to draw")
    origin = min(e["ts"] for e in spans)
    rows, labels = {}, []
    for r in info["ranks"]:
        tracks = sorted({e["tid"] for e in spans if e["pid"] == r["rank"]})
        for tid in tracks:
            rows[r["rank"], tid] = len(labels)
            name = f"rank {r['rank']} ({r['host']})" if tid == 0 else \
                f"  bucket {tid - 100}" if tid >= 100 else f"  copy {tid}"
            labels.append(name)
    fig, ax = plt.subplots(figsize=(12, 0.55 * len(labels) + 1.6))
    for e in spans:
        y = rows[e["pid"], e["tid"]]
        start, width = (e["ts"] - origin) / 1e3, e["dur"] / 1e3
        if e["cat"] == "wait":
            ax.barh(y, width, left=start, height=0.8, color="none", edgecolor="black",
                    hatch="///", linewidth=0.5)
        elif e["cat"] in ("forward", "backward"):     # a layer: a thin bar inside its phase
            ax.barh(y + 0.3, width, left=start, height=0.25, color=COLOURS[e["cat"]],
                    edgecolor="white", linewidth=0.3)
        else:
            colour = COLOURS.get(e["name"], COLOURS.get(e["cat"], "lightgray"))
            ax.barh(y, width, left=start, height=0.5 if e["cat"] == "collective" and
                    e["name"] == "batch-norm sum" else 0.6, color=colour,
                    edgecolor="white", linewidth=0.3)
    for e in trace["traceEvents"]:
        if e.get("cat") == "step" and e["pid"] == 0 and e["args"]["step"] in shown:
            ax.axvline((e["ts"] - origin) / 1e3, color="gray", lw=0.6, ls=":")
            ax.text((e["ts"] - origin) / 1e3, -0.45, f" step {e['args']['step']}", fontsize=8,
                    va="bottom", color="gray")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms (rank 0's clock)")
    ax.set_title(title, pad=14)
    ax.grid(axis="x", alpha=0.3)
    legend = [Patch(color=COLOURS[p], label=p if p != "gradient sum" else
                    "gradient sum (a bucket's: start to completion)") for p in
              ("data", "forward", "backward", "gradient sum", "update", "gather",
               "batch-norm sum")]
    legend.append(Patch(facecolor="none", edgecolor="black", hatch="///",
                        label="waiting for another rank"))
    fig.legend(handles=legend, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.trace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run folder with timeline.json (run.timeline > 0)")
    args = parser.parse_args(argv)
    try:
        trace = read_trace(Path(args.run_dir) / "timeline.json")
    except ExpectedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(analyse(trace))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
