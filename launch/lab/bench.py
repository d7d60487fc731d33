"""Training throughput against this machine's own float32 GEMM peak, per preset and rank count.

    python -m launch.lab.bench                             # mlp, cnn, best in this process
    mpirun -n 2 python -m launch.lab.bench                 # any MPI launch: measured on its ranks
    python -m launch.lab.bench --ranks 1,2,4               # itself under mpirun, per rank count
    python -m launch.lab.bench --ranks 1,2 --threads 1     # 1 thread per rank (scaling)
    python -m launch.lab.bench --presets cnn --long        # longer, steadier measurement
    python -m launch.lab.bench --quick --out /tmp/b.json   # a few steps: checks that it runs
    python -m launch.lab.bench --ranks 2 --update allreduce   # another update (dist/update.py)
    python -m launch.lab.bench --layers --presets cnn      # ms per layer, forward and backward
    python -m launch.lab.bench --links unlimited,1gbit:100us  # across fake hosts (scaling.py)

What a step is: dist.train's own ``train_step`` on real MNIST (data.prepare.ensure_dataset()),
after dist.train's ``local_batch``: the input pipeline, data/pipeline.py (deskew, keyed
augmentation and normalisation, as the preset asks: "data"), model.forward with keyed
dropout noise ("forward", includes the batch-norm reduces), the loss and model.backward
("backward"), the update that dist.train picks for this topology (dist/update.py): its
reduce-scatter and all-gather ("allreduce": includes waiting for the slowest rank), its
SGD step and the finiteness check ("optimizer"). `--update KIND` times another kind.
A rank's threads are copies of the model, each on its rows of the batch, with BLAS on one
thread (core/replicas.py), as dist.train runs them. Steps run in blocks; images/s and the
split come from the fastest block (best-of-N: the machine may be shared).

The physical limit: a plain float32 numpy matmul (2048 square, best of several) run by every
rank at once, with as many BLAS threads as the rank has model copies; the sum over ranks is
the machine's GEMM peak for this launch. It is measured before and after every preset, and
the highest figure counts for all rows. Achieved GFLOP/s = images/s x training FLOPs per
image, where the training FLOPs are 3x the model's forward FLOPs (forward, dW and dx GEMMs)
minus the dx of the first layer with parameters, which the model never computes (see
launch/lab/bench_table.py).

The GEMM ceiling ("ceil%"): the matrix products of one step, derived from the model's layers,
replayed alone (launch/lab/gemm_ceiling.py); the %peak the step would reach if those products
were all it did. The gap between %peak and ceil% is everything else; the gap from ceil% to 100%
is what BLAS makes of the step's thin shapes.

Also: the update alone, every kind of dist/update.py ("allreduce": then SGD on every
parameter; "sharded": MPI's reduce-scatter, SGD on this rank's slice, MPI's all-gather;
"shared-memory": the same halves through a shared-memory window, where all ranks share a node),
timed in alternation in the same launch so that all see the same moments of a shared machine
(ms per step); evaluation images/s (rank 0, dist.evaluate over validation images with all
cores, as dist.train does at epoch end) and peak memory per rank (ru_maxrss). With --ranks,
every (preset, rank count) runs in its own mpirun, so ru_maxrss is that preset's own peak; in
a direct launch it is the process's peak so far (presets run in order).

Prints a table and writes JSON ({"rows": [...], ...}; `python -m launch.report` plots the rows
when the file is copied into a run folder as bench.json) to runs/bench-<time>/bench.json or --out.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from core.losses import LOSSES
from core.model import Model
from core.replicas import blas_on_one_thread
from data.errors import UserError
from data.prepare import ensure_dataset
from data.shards import read_epoch_shard, read_split
from dist.collective import on_root
from dist.comm import Comm, install_abort_hook
from dist.config import CONFIG_DIR, KINDS, load_config
from dist.errors import ExpectedError
from dist.evaluate import evaluate
from dist.train import (Clock, build_model, build_net, build_optimizer, build_update,
                        local_batch, train_step)
from dist.update import make_update
from launch.lab.bench_table import PHASES, format_table, train_flops
from launch.lab.fakehosts import MPIRUN
from launch.lab.gemm_ceiling import layer_gemms, replay_seconds, step_gemms

REPO = Path(__file__).resolve().parents[2]
CHILD_ENV = "MPIGRAD_BENCH_CHILD"


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m launch.lab.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="mlp,cnn,best", help="comma-separated presets")
    ap.add_argument("--ranks", default="", help="e.g. 1,2,4: run each with mpirun -n N")
    ap.add_argument("--threads", type=int, default=0,
                    help="model copies (threads) per rank (0: dist.train's share of the cores)")
    ap.add_argument("--seconds", type=float, default=1.0, help="target length of a timed block")
    ap.add_argument("--blocks", type=int, default=3, help="timed blocks per preset (best wins)")
    ap.add_argument("--eval-images", type=int, default=2000,
                    help="images of the timed evaluation pass (the validation split, repeated "
                         "if more: 10000 matches torch_peer's pass over the test set)")
    ap.add_argument("--update", default="auto", choices=KINDS,
                    help="the update kind (dist/update.py; default: dist.train's, by topology)")
    ap.add_argument("--layers", action="store_true",
                    help="instead: forward and backward ms of every layer, one thread")
    ap.add_argument("--quick", action="store_true", help="tiny: for tests and a first look")
    ap.add_argument("--long", action="store_true", help="5 blocks of 5 s per preset")
    ap.add_argument("--out", help="JSON path (default runs/bench-<time>/bench.json)")
    args = ap.parse_args(argv)
    args.presets = [p for p in args.presets.split(",") if p]
    check_args(args)
    if args.quick:
        args.seconds, args.blocks, args.eval_images = 0.05, 1, 200
    if args.long:
        args.seconds, args.blocks, args.eval_images = 5.0, 5, 5000
    return args


def check_args(args) -> None:
    """Bad values end the run here, in one line, before any rank starts measuring."""
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    for name in args.presets or [""]:
        if name not in known:
            raise ExpectedError(f"--presets: no such preset {name!r} (known: {', '.join(known)})")
    given = args.ranks
    try:
        args.ranks = [int(r) for r in given.split(",") if r.strip()]
    except ValueError:
        args.ranks = [0]
    for flag, value, ok, want in (
            ("--ranks", given, all(n >= 1 for n in args.ranks), "rank counts >= 1, e.g. 1,2,4"),
            ("--threads", args.threads, args.threads >= 0, "an integer >= 0"),
            ("--seconds", args.seconds, args.seconds > 0, "a number > 0"),
            ("--blocks", args.blocks, args.blocks >= 1, "an integer >= 1"),
            ("--eval-images", args.eval_images, args.eval_images >= 0, "an integer >= 0")):
        if not ok:
            raise ExpectedError(f"{flag} {value}: expected {want}")


def gemm_peak(comm: Comm, threads: int, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a float32 n x n matmul with `threads` BLAS threads on every rank at once,
    summed over ranks."""
    rng = np.random.default_rng(comm.rank)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), np.float32)
    with threadpool_limits(threads, user_api="blas"):
        np.matmul(a, b, out=c)                              # warm-up: threads, pages
        best = np.inf
        for _ in range(repeats):
            comm.wait_for_root() if comm.size > 1 else None     # start together
            t = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t)
    return float(comm.allreduce_sum(np.array([2 * n ** 3 / best / 1e9]))[0])


def bench_preset(comm: Comm, name: str, data_path: str, threads: int, args) -> dict:
    """Time dist.train's step for one preset on this launch's ranks; rank 0 gets the row."""
    cfg = load_config(name)
    batch, seed = cfg.train.batch_size, cfg.train.seed
    model = build_model(cfg, comm)
    shard = read_epoch_shard(data_path, seed, 0, comm.rank, comm.size, batch,
                             split_seed=cfg.data.split_seed, val_size=cfg.data.val_size)
    opt, _ = build_optimizer(cfg, model, shard.steps)
    update = build_update(cfg, comm, model, opt, args.update, threads=threads)
    loss_fn, lr = LOSSES[cfg.model.loss], cfg.optim.lr * 0.1   # small lr: stays finite
    net = build_net(model, threads)                            # the model copies
    k = 0

    def step(times):
        nonlocal k
        clock = Clock()
        x, y, noise = local_batch(cfg, shard, k % shard.steps, epoch=0)
        clock.lap("data")
        _, out = train_step(net, loss_fn, update, x, y, noise, lr, batch, clock)
        if not update.finite():
            raise FloatingPointError(f"{name}: non-finite parameters in the benchmark")
        (out.argmax(axis=1) == y).sum()                       # as the loop's accuracy tally
        clock.lap("optimizer")
        times += np.array([clock.seconds[p] for p in PHASES])
        k += 1

    for _ in range(3):                                         # warm-up: buffers, pages
        step(np.zeros(len(PHASES)))
    # Steps per block from a probe, agreed by all ranks (they must run the same count).
    probe = time.perf_counter()
    step(np.zeros(len(PHASES)))
    per_step = float(comm.allreduce_sum(np.array([time.perf_counter() - probe]))[0]) / comm.size
    steps = max(2, int(args.seconds / max(per_step, 1e-4)))
    best = None
    for _ in range(args.blocks):
        times = np.zeros(len(PHASES))
        t = time.perf_counter()
        for _ in range(steps):
            step(times)
        wall = float(comm.allreduce_sum(np.array([time.perf_counter() - t]))[0]) / comm.size
        if best is None or wall < best[0]:
            best = (wall, times / steps)
    wall, split = best
    transport = update.transport
    update.close()
    update_ms = update_costs(comm, cfg, model, shard.steps, repeats=5 if args.quick else 50)
    eval_ips = eval_speed(comm, model, data_path, cfg, args.eval_images)
    rss = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    # After the peak memory is taken: the replay's operands are not training's memory.
    rows = int(shard.batch_offsets[1] - shard.batch_offsets[0])   # this rank's share of a batch
    gemms = step_gemms(model, rows, threads)
    gemm_s = replay_seconds(gemms, repeats=2 if args.quick else 10,
                            start=comm.wait_for_root, finish=comm.barrier)
    gemm_s = max(comm.allgather(gemm_s))                                      # slowest rank
    ips = steps * batch / wall
    flops = train_flops(model)
    return {"preset": name, "ranks": comm.size, "threads": threads, "batch_size": batch,
            "steps": steps, "blocks": args.blocks, "images_per_s": ips,
            "step_ms": 1e3 * wall / steps, "train_flops_per_image": flops,
            "gflops": ips * flops / 1e9,
            "split_ms": {p: 1e3 * float(s) for p, s in zip(PHASES, split)},
            "eval_images_per_s": eval_ips, "peak_rss_mib": max(rss) if rss else None,
            "rss_mib_per_rank": rss, "params": int(model.theta.size),
            "augment": bool(cfg.data.augment), "update_transport": transport,
            "update_ms": update_ms,
            "gemm_ms": 1e3 * gemm_s, "gemm_calls": len(gemms),
            "gemm_gflops_per_rank": sum(g.flops for g in gemms) / gemm_s / 1e9,
            "ceiling_images_per_s": batch / gemm_s}


def update_costs(comm: Comm, cfg, model: Model, steps: int, repeats: int) -> dict:
    """ms per step of every update kind of dist/update.py, timed alone and in alternation
    (the same moments of a noisy machine for all), on copies of theta and grad, with ranks
    started together; the slowest rank counts."""
    theta, grad = model.theta.copy(), np.full_like(model.grad, 1e-3)
    kinds = ("allreduce", "sharded") + (("shared-memory",) if comm.single_node else ())
    ways = {kind: make_update(comm, theta, grad, build_optimizer(cfg, model, steps)[0], kind)
            for kind in kinds}
    best = {kind: np.inf for kind in ways}
    for _ in range(5):
        for kind, update in ways.items():
            comm.wait_for_root()
            t = time.perf_counter()
            for _ in range(repeats):
                update.reduce_gradient()
                update.step(1e-6)
                update.gather_parameters()
            slowest = max(comm.allgather((time.perf_counter() - t) / repeats))
            best[kind] = min(best[kind], 1e3 * slowest)
    for update in ways.values():
        update.close()
    return best


def eval_speed(comm: Comm, model: Model, data_path: str, cfg, n: int) -> float | None:
    """Rank 0 evaluates n validation images with all cores; the others sleep meanwhile."""
    ips = None
    if comm.is_root and n > 0:
        images, labels, _ = read_split(data_path, "val", cfg.data.split_seed, cfg.data.val_size)
        images, labels = np.resize(images, (n,) + images.shape[1:]), np.resize(labels, n)
        cores = len(os.sched_getaffinity(0))
        evaluate(model, images[:100], labels[:100], cfg.model.loss, threads=cores)   # warm-up
        t = time.perf_counter()
        evaluate(model, images, labels, cfg.model.loss, threads=cores)
        ips = len(images) / (time.perf_counter() - t)
    comm.wait_for_root()
    return ips


def blas_info() -> dict:
    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return {k: info[0].get(k) for k in ("internal_api", "version", "architecture",
                                        "threading_layer")} if info else {}


def run_here(args) -> dict | None:
    """Measure every preset on the ranks of this launch; rank 0 returns the results."""
    comm = Comm()
    install_abort_hook(comm)                # an unexpected error on one rank ends the job
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or comm.cores.per_rank
    blas_on_one_thread()                    # as dist.train: the threads are the model copies
    np.seterr(over="ignore", invalid="ignore", divide="ignore")
    # Rank 0 reads (or downloads) the data; a problem with it stops every rank, in one line.
    data_path = str(on_root(comm, ensure_dataset, quiet=True))
    repeats = 2 if args.quick else 5
    # The peak is measured before and after every preset and the highest figure is the limit
    # for all rows: on a shared machine one measurement can land in a slow moment.
    peak = gemm_peak(comm, threads, repeats=repeats)
    rows = []
    for name in args.presets:
        rows.append(bench_preset(comm, name, data_path, threads, args))
        peak = max(peak, gemm_peak(comm, threads, repeats=repeats))
    for row in rows:
        row.update(peak_gflops=peak, pct_peak=100 * row["gflops"] / peak,
                   ceiling_pct_peak=100 * row["ceiling_images_per_s"]
                   * row["train_flops_per_image"] / 1e9 / peak)
    if not comm.is_root:
        return None
    return {"rows": rows, "machine": {"cores": cores, "blas": blas_info(),
                                      "numpy": np.__version__, "cpu": cpu_name()},
            "command": " ".join(["python -m launch.lab.bench"] + sys.argv[1:]),
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def run_ranks(args, argv) -> dict:
    """--ranks: one mpirun per (rank count, preset), so ru_maxrss is that preset's own."""
    cores = len(os.sched_getaffinity(0))
    passthrough = [a for a in strip_option(strip_option(strip_option(argv, "--ranks"),
                                                        "--out"), "--presets")]
    result = None
    env = dict(os.environ, **{CHILD_ENV: "1"})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            for name in args.presets:
                out = Path(tmp) / f"{name}-{n}.json"
                threads = args.threads or max(1, cores // n)
                cmd = [MPIRUN, "-n", str(n), sys.executable, "-m", "launch.lab.bench",
                       "--presets", name, "--threads", str(threads), "--out", str(out),
                       *passthrough]
                print(f"# {n} rank(s) x {threads} thread(s): {name}", file=sys.stderr, flush=True)
                proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
                if proc.returncode != 0:
                    raise SystemExit(f"error: {' '.join(cmd)} exited with {proc.returncode}")
                part = json.loads(out.read_text())
                result = part if result is None else {**result, "rows": result["rows"] + part["rows"]}
    result["command"] = " ".join(["python -m launch.lab.bench"] + argv)
    return result


def strip_option(argv, name):
    """argv without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def layer_times(name: str, repeats: int) -> list[dict]:
    """ms of forward and backward of every layer of a preset's model, one copy on one thread,
    on one batch of real MNIST at the preset's batch size (best of `repeats` after a warm-up).
    As in training, the first layer with parameters computes no dL/dimage. Also the ms of each
    layer's matrix products replayed alone (launch/lab/gemm_ceiling.py): the rest of a layer's
    time is memory traffic around them."""
    cfg = load_config(name)
    model = build_model(cfg, Comm())
    shard = read_epoch_shard(str(ensure_dataset(quiet=True)), cfg.train.seed, 0, 0, 1,
                             cfg.train.batch_size, split_seed=cfg.data.split_seed,
                             val_size=cfg.data.val_size)
    x, y, noise = local_batch(cfg, shard, 0, epoch=0)
    first = model._first_param
    model.layers[first].need_dx = False
    best = np.full((len(model.layers), 2), np.inf)

    def timed(i, phase, run, warm_up):
        t = time.perf_counter()
        out = run()
        if not warm_up:
            best[i, phase] = min(best[i, phase], time.perf_counter() - t)
        return out

    for r in range(repeats + 1):                                   # the first run warms up
        h = x
        for i, layer in enumerate(model.layers):
            h = timed(i, 0, lambda: layer.forward(h, True, noise) if layer.needs_noise
                      else layer.forward(h, True), warm_up=r == 0)
        _, d = LOSSES[cfg.model.loss](h, y, divisor=len(y))
        for i in range(len(model.layers) - 1, first - 1, -1):
            d = timed(i, 1, lambda: model.layers[i].backward(d), warm_up=r == 0)
    gemm = [[1e3 * replay_seconds(gemms, repeats) if gemms else 0.0
             for gemms in layer_gemms(layer, len(x), need_dx=i != first)]
            for i, layer in enumerate(model.layers)]                # per layer: fwd, bwd
    return [{"index": i, "type": layer.type_name, "input_shape": list(layer.input_shape),
             "forward_ms": 1e3 * best[i, 0],
             "backward_ms": 1e3 * best[i, 1] if np.isfinite(best[i, 1]) else 0.0,
             "forward_gemm_ms": gemm[i][0], "backward_gemm_ms": gemm[i][1]}
            for i, layer in enumerate(model.layers)]


def print_layer_times(name: str, rows: list[dict]) -> None:
    print(f"{name}: ms per layer, batch {load_config(name).train.batch_size} "
          "(in brackets: the layer's matrix products replayed alone)")
    for r in rows:
        print(f"{r['index']:>3} {r['type']:<10} {str(tuple(r['input_shape'])):<16}"
              f"fwd {r['forward_ms']:>8.2f} ({r['forward_gemm_ms']:>6.2f})  "
              f"bwd {r['backward_ms']:>8.2f} ({r['backward_gemm_ms']:>6.2f})")
    total = {k: sum(r[k] for r in rows) for k in ("forward_ms", "forward_gemm_ms",
                                                  "backward_ms", "backward_gemm_ms")}
    print(f"    total{'':<20}fwd {total['forward_ms']:>8.2f} ({total['forward_gemm_ms']:>6.2f})  "
          f"bwd {total['backward_ms']:>8.2f} ({total['backward_gemm_ms']:>6.2f})")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--links" or a.startswith("--links=") for a in argv):
        from launch.lab.scaling import main as scaling   # hosts and links: its own options
        return scaling(argv)
    try:
        return measure(argv)
    except UserError as err:                        # every rank gets here (dist.collective)
        if Comm().is_root:
            print(f"error: {err}", file=sys.stderr)
        return 2


def measure(argv) -> int:
    args = parse_args(argv)
    if args.layers:
        blas_on_one_thread()                   # one copy on one thread, as each of training's
        result = {name: layer_times(name, 2 if args.quick else 10) for name in args.presets}
        for name, rows in result.items():
            print_layer_times(name, rows)
        if args.out:
            Path(args.out).write_text(json.dumps({"threads": 1, "layers": result}, indent=1))
        return 0
    result = run_ranks(args, argv) if args.ranks else run_here(args)
    if result is None:                                         # not rank 0
        return 0
    out = Path(args.out) if args.out else \
        REPO / "runs" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}" / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if not os.environ.get(CHILD_ENV):
        print(format_table(result))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
