"""Helpers of launch/lab/bench.py: FLOP counting and the table.

Training FLOPs per image.  Model.describe() gives forward FLOPs per sample (a multiply-add is
2).  A dense or conv layer's backward is two GEMMs of the forward's size (dW = x^T dy and
dx = dy W^T), so a training step costs 3x the forward -- except that the model never computes
dL/dimage: the first layer with parameters skips its dx GEMM.  Elementwise layers are counted
3x too (nominal: they are memory-bound and small next to the GEMMs).

    python -m launch.lab.bench_table runs/bench-X/bench.json     # print the table of a saved run
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PHASES = ("data", "forward", "backward", "allreduce", "optimizer")

def train_flops(model) -> int:
    """FLOPs of one training step per image (see the module docstring)."""
    d = model.describe()
    first = next((l for l in d["layers"] if l["params"] and l["type"] in ("conv", "dense")), None)
    return 3 * d["flops_per_sample"] - (first["flops"] if first else 0)


def format_table(result: dict) -> str:
    """The rows as a fixed-width table, with the machine and the command above it."""
    m = result.get("machine", {})
    blas = m.get("blas", {})
    lines = [f"# {m.get('cpu', '?')}, {m.get('cores', '?')} cores, numpy {m.get('numpy', '?')}, "
             f"BLAS {blas.get('internal_api', '?')} {blas.get('version', '?')} "
             f"kernel {blas.get('architecture', '?')}",
             f"# {result.get('command', '')}",
             f"{'preset':<7}{'ranks':>6}{'thr':>4}{'batch':>6}{'img/s':>9}{'GFLOP/s':>9}"
             f"{'peak':>7}{'%peak':>7}{'ceil%':>7}{'step ms':>9}  "
             + " ".join(f"{p[:5]:>6}" for p in PHASES)
             + f"{'allr%':>7}{'eval/s':>8}{'MiB':>6}"]
    for r in sorted(result["rows"], key=lambda r: (r["preset"], r["ranks"], r["threads"])):
        split = r["split_ms"]
        step = sum(split.values())
        lines.append(
            f"{r['preset']:<7}{r['ranks']:>6}{r['threads']:>4}{r['batch_size']:>6}"
            f"{r['images_per_s']:>9.0f}{r['gflops']:>9.1f}{r['peak_gflops']:>7.0f}"
            f"{r['pct_peak']:>6.0f}%"
            + (f"{r['ceiling_pct_peak']:>6.0f}%" if "ceiling_pct_peak" in r else f"{'-':>7}")
            + f"{r['step_ms']:>9.2f}  "
            + " ".join(f"{split[p]:>6.2f}" for p in PHASES)
            + f"{100 * split['allreduce'] / step:>6.1f}%"
            + (f"{r['eval_images_per_s']:>8.0f}" if r.get("eval_images_per_s") else f"{'-':>8}")
            + f"{r['peak_rss_mib']:>6.0f}")
    lines.append("# split: ms per step (rank 0) in data, forward, backward, allreduce, optimizer;"
                 " MiB: peak RSS, max over ranks")
    lines.append("# ceil%: the %peak if the step's matrix products, replayed alone at their own"
                 " shapes, were all it did (launch/lab/gemm_ceiling.py)")
    for r in sorted(result["rows"], key=lambda r: (r["preset"], r["ranks"], r["threads"])):
        u = r.get("update_ms")
        if u and r["ranks"] > 1:
            ways = ", ".join(f"{kind} {ms:.2f} ms" for kind, ms in u.items())
            lines.append(f"# update alone, {r['preset']} at {r['ranks']} ranks: {ways}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(json.loads(Path(sys.argv[1]).read_text())))
