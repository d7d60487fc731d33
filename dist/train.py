"""Data-parallel training of a hand-written numpy network over MPI.

    mpirun -n 4 python -m dist.train                       # default preset (cnn)
    python -m dist.train --preset classic                  # one process: the debugging mode
    mpirun -n 2 python -m dist.train --optim.lr 0.1 --set train.epochs=3
    mpirun -n 4 python -m dist.train --resume runs/cnn-20261122-101500
    mpirun -n 4 python -m dist.train --resume auto --set run.name=cnn-a   # start or continue
    python -m dist.train --debug                           # gradient check, finiteness checks

Every rank builds the same model from the same seed and reads its shard of each epoch
(``data.shards``). One step (``train_step``): forward, loss and backward on this rank's share of
the global batch; the gradient summed over ranks; one SGD step (``dist.update``: by default
each rank updates its own slice of the flat parameters and the slices are gathered again).
The loss divides by the *global* batch size, so the summed gradient is the single-process one:
``python -m dist.train`` computes the same step as ``mpirun -n 4``, up to float summation
order -- the samples, augmentations and dropout masks are identical, the parameters after a
step agree to ~1e-8, but the rounding differences grow, and once a ReLU or max-pool decision
flips the runs go separate ways (measured on cnn: 1e-6 after ~10 steps, 5-7% of the norm of
theta after 60; final accuracies within 0.1%). The same rank count repeats bit for bit.
Rank 0 evaluates, logs and writes the checkpoints (``dist.rundir``); the other ranks wait for
it without spinning a core. SIGTERM, SIGINT or SIGUSR1 stops the job at the next step
with a checkpoint of it (``dist.stop``; exit status 128 + the signal).
"""
from __future__ import annotations

if __name__ == "__main__":   # before the imports below (MPI starts in one): a stop signal
    from dist.stop import hold_signals   # meanwhile stops the job at its first step
    hold_signals()

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.ema import EMA
from core.keyed_random import KeyedNoise, sample_keys
from core.losses import LOSSES
from core.model import Model
from core.optim import SGD
from core.replicas import Replicas, blas_on_one_thread
from core.schedules import make_schedule
from data.hdf5 import open_mnist
from data.pipeline import training_input
from data.prepare import default_path, ensure_dataset
from data.shards import read_epoch_shard, read_split, split_train_val, steps_per_epoch
from dist import checkpoint as ck
from dist import rundir
from dist.collective import collectively, on_root, run_main
from dist.comm import Comm
from dist.config import check_batch_fits, check_for_world, help_text, load_config
from dist.cores import root_threads
from dist.debug import debug_first_step, forward_checked
from dist.errors import ExpectedError
from dist.evaluate import evaluate, model_from_checkpoint
from dist.stop import GracefulStop
from dist.tensorboard import open_log
from dist.timeline import Timeline, breakdown_lines
from dist.update import make_update


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one ExpectedError: every rank parses the
    same arguments, so rank 0 alone prints it (plain argparse would print usage per rank)."""

    def error(self, message):
        raise ExpectedError(f"{self.prog}: {message} (see --help)", everywhere=True)


def parse_args(argv):
    parser = ArgumentParser(
        prog="python -m dist.train", description=__doc__, epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="a preset in launch/configs/ (default: cnn)")
    parser.add_argument("--config", help="a TOML preset file or a run's config.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set optim.lr=0.05 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR_OR_CKPT",
                        help="continue from a run's newest checkpoint that loads (or a given "
                             "file); 'auto': continue the folder of run.name if it holds a "
                             "checkpoint, else start it (a requeued batch job needs no edit)")
    parser.add_argument("--debug", action="store_true",
                        help="small run: gradient check at step 1, finiteness after every layer")
    args, rest = parser.parse_known_args(argv)
    # `--optim.lr 0.05` is shorthand for `--set optim.lr=0.05`.
    while rest:
        flag = rest.pop(0)
        if not (flag.startswith("--") and "." in flag):
            parser.error(f"unrecognized argument: {flag}")
        if "=" in flag:
            args.set.append(flag[2:])
        elif rest:
            args.set.append(f"{flag[2:]}={rest.pop(0)}")
        else:
            parser.error(f"{flag} needs a value")
    if args.preset and args.config:
        parser.error(f"--preset {args.preset} with --config {args.config}: give one of them "
                     f"(a config file names its own preset)")
    if args.resume not in (None, "auto") and (args.preset or args.config):
        parser.error("--resume takes the config from the checkpoint; use --set to change fields")
    return args


def build_model(cfg, comm: Comm) -> Model:
    """Every rank builds the same model from the same seed; batch norm sums across ranks."""
    try:
        return Model(cfg.model.layers, seed=cfg.train.seed, reduce=comm.allreduce_sum)
    except ValueError as err:  # core/ names the layer and the key
        raise ExpectedError(f"model.layers: {err}") from None


def build_optimizer(cfg, model: Model, steps: int):
    """SGD on the flat arena and the learning rate as a pure function of the global step."""
    # Batch norm's gamma and beta at optim.bn_lr_scale times the lr: a scale vector only when
    # it is not 1, so that the default step is the plain one, bit for bit.
    scale = cfg.optim.bn_lr_scale
    lr_scale = None if scale == 1 else np.where(model.bn_mask == 1, scale, 1.0)
    try:
        opt = SGD(model.theta.size, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov,
                  weight_decay=cfg.optim.weight_decay, decay_mask=model.decay_mask,
                  lr_scale=lr_scale)
        lr_at = make_schedule(cfg.schedule.kind, cfg.optim.lr,
                              total_steps=cfg.train.epochs * steps,
                              warmup_steps=round(cfg.schedule.warmup_epochs * steps),
                              step_size=max(cfg.schedule.step_epochs, 1) * steps,
                              gamma=cfg.schedule.gamma, min_lr=cfg.schedule.min_lr,
                              cycles=cfg.schedule.cycles)
    except ValueError as err:
        raise ExpectedError(f"optim/schedule: {err}") from None
    return opt, lr_at


def training_loss(cfg):
    """The loss a step minimises: the config's, with its label smoothing (validation and test
    report the plain loss)."""
    if cfg.model.label_smoothing:
        return partial(LOSSES[cfg.model.loss], smoothing=cfg.model.label_smoothing)
    return LOSSES[cfg.model.loss]


def build_update(cfg, comm: Comm, model: Model, opt: SGD, kind: str | None = None,
                 threads: int = 1):
    """The gradient sum and step for this topology and the [comm] settings (dist/update.py);
    the rank's threads share its optimizer step."""
    c = cfg.comm
    return make_update(comm, model.theta, model.grad, opt, kind or c.update,
                       layer_offsets=model.param_offsets, bucket_mb=c.bucket_mb,
                       overlap=c.overlap, hierarchical=c.hierarchical, threads=threads)


def local_batch(cfg, shard, k: int, epoch: int):
    """This rank's part of global batch k: the network input (b, 28, 28, 1) float32
    (data/pipeline.py), labels (b,) and the dropout noise. Random numbers are keyed by (seed,
    epoch, global sample index), never by rank, so a sample is augmented and dropped out the
    same way on any number of ranks."""
    lo, hi = shard.batch_offsets[k], shard.batch_offsets[k + 1]
    keys = sample_keys(cfg.train.seed, epoch, shard.indices[lo:hi])
    x = training_input(shard.images[lo:hi], keys, cfg.model.layers, cfg.data)
    return x, shard.labels[lo:hi].astype(np.int64), KeyedNoise(keys)


def prepare_data(cfg) -> str:
    """The HDF5 file to train on: a named file must exist; the default is prepared on first use."""
    if cfg.data.path and not Path(cfg.data.path).is_file():
        raise ExpectedError(f"data.path={cfg.data.path}: no such file (prepare it with "
                            f"`python -m data.prepare --out {cfg.data.path}`, or leave "
                            f"data.path empty to use the per-user cache)")
    path = Path(cfg.data.path) if cfg.data.path else default_path()
    # Quiet when the file is there already; show progress when it is being prepared.
    return str(ensure_dataset(path, cfg.data.source or None, quiet=path.is_file()))


@dataclass
class Progress:
    """Where training stands: the whole training state besides the arrays. Randomness is
    keyed by (seed, epoch, global sample index), so these counters are all resume needs."""
    epoch: int = 0              # the epoch in progress (or next to start)
    step: int = 0               # steps of that epoch already done
    global_step: int = 0
    best_metric: float = -np.inf  # best validation accuracy so far
    best_epoch: int = -1
    bad_epochs: int = 0         # epochs since the best (early stopping)
    epoch_totals: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # the epoch's loss
    # sum, correct and samples over all ranks up to `step`: a resumed epoch is logged whole


class Clock:
    """Wall time split into phases: ``lap(name)`` charges the time since the last lap to name,
    and tells the run's timeline (dist/timeline.py: the run's totals, and spans while it
    records)."""

    def __init__(self, timeline=None):
        self.seconds, self.last = defaultdict(float), time.perf_counter()
        self.timeline = timeline

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] += now - self.last
        if self.timeline is not None:
            self.timeline.lap(name, self.last, now)
        self.last = now


def build_net(model: Model, threads: int) -> Model | Replicas:
    """What a step runs: with several threads, one copy of the model per thread, each on its
    rows of the batch (core/replicas.py); with one, the model itself."""
    return Replicas(model, threads) if threads > 1 else model


def train_step(net: Model | Replicas, loss_fn, update, x, y, noise, lr: float, batch: int,
               clock: Clock, debug: bool = False) -> tuple[float, np.ndarray]:
    """One synchronous SGD step on this rank's share (x, y) of a global batch of ``batch``.
    Returns the loss (summed over local samples / global batch) and the network outputs."""
    out = forward_checked(net, x, noise) if debug else net.forward(x, train=True, noise=noise)
    clock.lap("forward")
    loss, dout = loss_fn(out, y, divisor=batch)   # sum over local samples / global B
    net.backward(dout, grad_ready=update.grad_ready)   # fills model.grad (flat); the
    # overlapped update starts summing the last layers' gradients while backward goes on
    clock.lap("backward")
    update.reduce_gradient()       # the summed gradient (of my slice)
    clock.lap("allreduce")
    update.step(lr)                # SGD on my slice of theta
    clock.lap("optimizer")
    update.gather_parameters()     # theta whole, the same on every rank
    clock.lap("gather")
    return loss, out


def configure(comm: Comm, args):
    """The config (a preset or the checkpoint's own, plus overrides) and the checkpoint,
    checked end to end (model, memory, ranks) before anything is built or written."""
    resume, where = None, args.resume
    report = print if comm.is_root else (lambda line: None)   # a skipped damaged checkpoint
    if where == "auto":   # continue run.name's folder if it holds a checkpoint, else start it
        cfg = collectively(comm, load_config, args.preset, args.config, args.set)
        where = collectively(comm, rundir.auto_resume, cfg)
    if where:
        resume = collectively(comm, ck.load_newest, where, report)
        if args.resume == "auto" and (args.preset or args.config):
            collectively(comm, rundir.check_same_preset, resume, cfg.preset)
        cfg = collectively(comm, load_config, base=resume.config, overrides=args.set)
    elif args.resume != "auto":
        cfg = collectively(comm, load_config, args.preset, args.config, args.set)
    if args.debug:  # a small, fully checked run
        cfg.train.steps_per_epoch = cfg.train.steps_per_epoch or 20
        cfg.train.epochs = min(cfg.train.epochs, 2)
    collectively(comm, check_for_world, cfg, comm.size, comm.local_size)
    return cfg, resume


def open_data(comm: Comm, cfg) -> tuple[str, str, int]:
    """Rank 0 prepares MNIST on first use; every rank checks the file. (path, fingerprint,
    steps per epoch)"""
    path = on_root(comm, prepare_data, cfg)
    info = collectively(comm, open_mnist, path, deep=False)  # rank 0 checked the contents
    train_idx, _ = split_train_val(cfg.data.split_seed, cfg.data.val_size, info.sizes["train"])
    collectively(comm, check_batch_fits, cfg, len(train_idx))
    steps = steps_per_epoch(len(train_idx), cfg.train.batch_size)
    return path, info.fingerprint, min(steps, cfg.train.steps_per_epoch or steps)


def read_eval_sets(comm: Comm, cfg, data_path: str):
    """Rank 0's validation and test sets ((images, labels, indices) each), read before the run
    folder exists: a file that cannot be read leaves no folder behind. None on other ranks."""
    if not comm.is_root:
        return None
    split = (cfg.data.split_seed, cfg.data.val_size)
    return read_split(data_path, "val", *split), read_split(data_path, "test", *split)


def start(comm: Comm, cfg, model: Model, opt: SGD, resume, fingerprint: str):
    """A fresh run folder, or the checkpoint's arrays and progress. (Progress, run folder)"""
    if resume is None:
        comm.bcast_array_(model.theta)  # identical already; guards against heterogeneous nodes
        run_dir = Path(on_root(comm, lambda: str(rundir.create(cfg))))
        cfg.run.name = run_dir.name
        return Progress(), run_dir
    collectively(comm, ck.check_compatible, resume, expect_spec=model.spec,
                 expect_sizes=(model.theta.size, model.state.size),
                 expect_fingerprint=fingerprint)
    model.theta[...], model.state[...] = resume.theta, resume.state
    opt.velocity[...] = resume.velocity
    progress = Progress(resume.epoch, resume.step, resume.global_step, resume.best_metric,
                        resume.best_epoch, resume.bad_epochs, list(resume.epoch_totals))
    on_root(comm, rundir.reopen, resume.path.parent, resume.epoch, resume.path)
    return progress, resume.path.parent


def make_ema(cfg, model: Model, resume) -> EMA | None:
    """The moving average of the weights (optim.ema_decay > 0; core/ema.py): the checkpoint's
    when resuming, else started at the current weights (a fresh run, or a run resumed with the
    average newly switched on)."""
    if not cfg.optim.ema_decay:
        return None
    ema = EMA(model.theta, model.state, cfg.optim.ema_decay)
    if resume is not None and resume.ema_theta is not None:
        ema.load(resume.ema_theta, resume.ema_state)
    return ema


def gather_state(update, ema: EMA | None) -> None:
    """Make whole on every rank what each rank kept current on its own slice only: the
    velocity and the moving average (collective; before evaluating or checkpointing)."""
    update.gather_velocity()
    if ema is not None:
        update.gather(ema.theta)


class RootWork:
    """What rank 0 does between steps while the others wait: checkpoints, evaluation, logs."""

    def __init__(self, comm: Comm, cfg, model: Model, opt: SGD, ema: EMA | None, run_dir: Path,
                 eval_sets, fingerprint: str, start: float):
        self.comm, self.cfg, self.model, self.opt, self.run_dir = comm, cfg, model, opt, run_dir
        self.ema, self.fingerprint, self.start = ema, fingerprint, start
        self.val_set, self.test_set = eval_sets or (None, None)   # rank 0's (read_eval_sets)
        # run.tensorboard: rank 0 writes the curves; a missing writer stops every rank here.
        self.tensorboard = collectively(comm, open_log, run_dir,
                                        cfg.run.tensorboard and comm.is_root)
        # The averaged weights are evaluated in a model of their own (eval mode: no reduce).
        self.averaged = Model(model.spec, seed=0) if ema is not None and comm.is_root else None
        self.last_test = None     # (epoch, its test figures), if end_of_epoch evaluated them

    def the_model(self) -> Model:
        """The model that counts: the moving average of the weights when there is one."""
        if self.ema is None:
            return self.model
        self.averaged.theta[...], self.averaged.state[...] = self.ema.theta, self.ema.state
        return self.averaged

    def checkpoint(self, progress: Progress, also_best: bool = False,
                   at_epoch_end: bool = False) -> None:
        m, cfg, ema = self.model, self.cfg, self.ema
        state = ck.Checkpoint(self.run_dir / ck.checkpoint_name(progress.epoch, progress.step),
                              m.theta, m.state, self.opt.velocity, **asdict(progress),
                              config=cfg.to_dict(), spec=m.spec,
                              data_fingerprint=self.fingerprint, world_size=self.comm.size,
                              ema_theta=ema.theta if ema else None,
                              ema_state=ema.state if ema else None)
        ck.write_checkpoint(self.run_dir, state, cfg.run.keep_last, best=also_best)
        if at_epoch_end:
            self.snapshot(state, progress.epoch)

    def snapshot(self, state: ck.Checkpoint, epoch: int) -> None:
        """A cyclic schedule's member for snapshot ensembles: the model at the end of each
        cycle, as a model file (dist.ensemble --snapshots)."""
        s = self.cfg.schedule
        per_cycle = max(self.cfg.train.epochs // s.cycles, 1)   # --debug cuts the epochs
        if s.kind == "cyclic" and epoch % per_cycle == 0:
            path = self.run_dir / ck.snapshot_name(epoch // per_cycle)
            ck.write_model_file(path, ck.as_model(state, path, source=str(state.path)),
                                kept=f"kept {state.path.name}; export the snapshot from it "
                                     f"later: python -m dist.checkpoint export {state.path} "
                                     f"{path}")

    def end_of_epoch(self, progress: Progress, record: dict, clock: Clock) -> bool:
        """Evaluate, update the best, checkpoint, log. Returns True to stop early."""
        cfg, epoch = self.cfg, progress.epoch       # the epoch just completed
        model, has_val = self.the_model(), len(self.val_set[1]) > 0
        threads = root_threads(self.comm)          # the other ranks sleep meanwhile
        val = evaluate(model, *self.val_set[:2], cfg.model.loss, threads=threads) \
            if has_val else None
        # With a moving average, the raw weights' validation figures too: whether the
        # average helps is decided on them (launch/docs/results.md, issue 20's D1).
        raw = evaluate(self.model, *self.val_set[:2], cfg.model.loss, threads=threads) \
            if has_val and model is not self.model else None
        # The test set every train.eval_test_every epochs, for the curves; at the end the final
        # report evaluates best.h5 (or takes this figure, when best.h5 is this epoch's model).
        every = cfg.train.eval_test_every
        test = evaluate(model, *self.test_set[:2], cfg.model.loss, threads=threads) \
            if cfg.train.report_test and every and epoch % every == 0 else None
        clock.lap("eval")
        improved = val is not None and val["acc"] > progress.best_metric
        if improved:
            progress.best_metric, progress.best_epoch, progress.bad_epochs = val["acc"], epoch, 0
        else:
            progress.bad_epochs += 1
        patience = cfg.train.patience
        stop = bool(patience and val is not None and progress.bad_epochs >= patience)
        self.checkpoint(progress, also_best=improved or val is None, at_epoch_end=True)
        clock.lap("checkpoint")
        if test is not None:
            self.last_test = (epoch, test)
        record.update(val_loss=val and val["loss"], val_acc=val and val["acc"],
                      test_loss=test and test["loss"], test_acc=test and test["acc"],
                      early_stop=stop)
        if raw is not None:
            record.update(raw_val_loss=raw["loss"], raw_val_acc=raw["acc"])
        record["seconds"] = {**split_of(clock), "train": record["seconds"]["train"],
                             "wall": time.perf_counter() - self.start}
        rundir.append_metrics(self.run_dir, record)
        if self.tensorboard:
            self.tensorboard.write(record)
        print(rundir.epoch_line(record, cfg.train.epochs), flush=True)
        return stop

    def final_report(self, progress: Progress, threads: int, stop: GracefulStop,
                     timeline: Timeline) -> bool:
        """The test evaluation and final.json, which a stop signal ends at once (the run's
        training is complete then; ``--resume RUN`` writes final.json). Returns whether it
        was stopped."""
        stopped = stop.interruptible(self.test_and_final, progress, threads, timeline)
        if self.tensorboard:
            self.tensorboard.close()
        return stopped

    def test_and_final(self, progress: Progress, threads: int, timeline: Timeline) -> None:
        """The model that counts is the one validation chose: best.h5, on the test set (the
        newest checkpoint if best.h5 was lost, e.g. to a full disk before version 18). Not
        with train.report_test = false: runs that decide something see validation only."""
        test, started = {"acc": None, "loss": None}, time.perf_counter()
        best = self.run_dir / "best.h5"
        if self.last_test and self.last_test[0] == progress.best_epoch and best.exists():
            test = self.last_test[1]   # best.h5 is the model the last epoch's end evaluated
        elif self.cfg.train.report_test:
            if not best.exists():
                best = ck.numbered_checkpoints(self.run_dir)[-1]
                print(f"note: {self.run_dir}/best.h5 is missing; reporting {best.name}")
            best_model, _ = model_from_checkpoint(best, self.fingerprint)
            test = evaluate(best_model, *self.test_set[:2], self.cfg.model.loss,
                            threads=root_threads(self.comm))
        breakdown = timeline.breakdown(final_test_seconds=time.perf_counter() - started)
        print("\n".join(breakdown_lines(breakdown)), flush=True)
        rundir.write_final(self.run_dir, {
            "run": str(self.run_dir), "best_epoch": progress.best_epoch,
            "best_val_acc": progress.best_metric, "test_acc": test["acc"],
            "test_loss": test["loss"], "wall_seconds": time.perf_counter() - self.start,
            "world_size": self.comm.size, "threads": threads, "preset": self.cfg.preset,
            "wall_breakdown": breakdown})


def split_of(clock: Clock) -> dict:
    """An epoch's time in the metrics' terms: compute, allreduce, data, eval, checkpoint."""
    s = clock.seconds
    return {"compute": s["forward"] + s["backward"] + s["optimizer"] + s["tally"],
            "allreduce": s["allreduce"] + s["gather"], "data": s["data"], "eval": s["eval"],
            "checkpoint": s["checkpoint"]}


def headline(comm: Comm, cfg, model: Model, threads: int, steps: int, update, run_dir: Path,
             progress: Progress) -> str:
    d = model.describe()
    copies = " (a model copy each)" if threads > 1 else ""
    return (f"mpigrad: {comm.size} rank(s) x {threads} thread(s){copies}, preset {cfg.preset!r}, "
            f"{d['params']:,} parameters, {d['flops_per_sample'] / 1e6:.1f} MFLOP/image, global "
            f"batch {cfg.train.batch_size}, {steps} steps/epoch, {update.transport} update, run "
            f"{run_dir}" + (f", resuming at epoch {progress.epoch + 1} step {progress.step}"
                            if progress.global_step else ""))


@dataclass
class Run:
    """What the loop works with; ``setup`` builds it the same way on every rank."""
    cfg: object
    model: Model
    net: Model | Replicas    # what a step runs: the model, or a copy of it per thread
    opt: SGD
    lr_at: object
    update: object
    ema: object
    root: RootWork
    progress: Progress
    run_dir: Path
    data_path: str
    steps: int
    threads: int
    graceful: GracefulStop
    timeline: Timeline       # the run's phase totals; a per-rank timeline if asked for


def setup(comm: Comm, args) -> Run | None:
    """Config, model, data, optimizer, update, and where to start: fresh or a checkpoint.
    None for a resumed run that is complete already (nothing to train, final.json kept)."""
    start_time, graceful = time.perf_counter(), GracefulStop(comm)
    cfg, resume = configure(comm, args)
    if resume is not None and on_root(comm, rundir.already_complete, resume, cfg):
        graceful.close()
        return None
    threads = cfg.run.threads or comm.cores.per_rank
    blas_on_one_thread()  # the parallelism is the ranks and the model copies (core/replicas.py)
    # Overflow shows up as a non-finite gradient, which the loop reports in one clear line
    # (and --debug pins to a layer); numpy's per-operation warnings would only add noise.
    np.seterr(over="ignore", invalid="ignore", divide="ignore")
    model = collectively(comm, build_model, cfg, comm)
    cfg.model.layers = model.spec  # defaults filled in: this is what checkpoints compare
    data_path, fingerprint, steps = open_data(comm, cfg)
    eval_sets = collectively(comm, read_eval_sets, comm, cfg, data_path)
    opt, lr_at = collectively(comm, build_optimizer, cfg, model, steps)
    update = build_update(cfg, comm, model, opt, threads=1 if args.debug else threads)
    progress, run_dir = start(comm, cfg, model, opt, resume, fingerprint)
    ema = make_ema(cfg, model, resume)
    root = RootWork(comm, cfg, model, opt, ema, run_dir, eval_sets, fingerprint, start_time)
    if comm.is_root:
        print(headline(comm, cfg, model, threads, steps, update, run_dir, progress), flush=True)
    net = model if args.debug else build_net(model, threads)  # --debug: the model, one thread
    timeline = Timeline(comm, cfg.run.timeline, cfg.run.timeline_start, net, model, update,
                        run_dir, start_time)
    return Run(cfg, model, net, opt, lr_at, update, ema, root, progress, run_dir, data_path,
               steps, threads, graceful, timeline)


def main(comm: Comm, argv=None) -> int:
    args = parse_args(argv)
    run = setup(comm, args)
    if run is None:
        return 0
    cfg, model, update, ema, progress, steps = (run.cfg, run.model, run.update, run.ema,
                                                run.progress, run.steps)
    loss_fn, batch = training_loss(cfg), cfg.train.batch_size

    for epoch in range(progress.epoch, cfg.train.epochs):
        clock, t_epoch, first = Clock(run.timeline), time.perf_counter(), progress.step
        shard = collectively(comm, read_epoch_shard, run.data_path, cfg.train.seed, epoch,
                             comm.rank, comm.size, batch, split_seed=cfg.data.split_seed,
                             val_size=cfg.data.val_size)
        clock.lap("data")
        carried = np.array(progress.epoch_totals)  # before `first`, all ranks (a resume)
        totals = np.zeros(3)  # loss sum, correct, samples (this rank, from `first`)
        bar = tqdm(total=steps, initial=first, desc=f"epoch {epoch + 1}", leave=False,
                   disable=not (comm.is_root and cfg.run.progress and sys.stderr.isatty()))
        for k in range(first, steps):
            clock.lap("other")
            run.timeline.begin_step(progress.global_step)
            lr = run.lr_at(progress.global_step)
            x, y, noise = local_batch(cfg, shard, k, epoch)
            clock.lap("data")
            if args.debug and progress.global_step == 0:
                debug_first_step(comm, model, x, y, cfg.model.loss, batch, noise)
            loss, out = train_step(run.net, loss_fn, update, x, y, noise, lr, batch, clock,
                                   args.debug)
            if not update.finite():        # the same theta everywhere: the same verdict
                raise ExpectedError(f"non-finite loss/gradient at epoch {epoch + 1} step {k + 1} "
                                    f"(lr {lr:.3g}); no checkpoint written from it. Try a "
                                    f"smaller optim.lr or run with --debug", everywhere=True)
            if ema is not None:            # my slice only: gathered before it is read
                ema.update(model.theta, model.state, progress.global_step, *update.my_slice)
            progress.step, progress.global_step = k + 1, progress.global_step + 1
            totals += (loss * batch, (out.argmax(axis=1) == y).sum(), len(y))
            clock.lap("tally")
            run.timeline.end_step()
            bar.update(1)
            every, stopping = cfg.run.checkpoint_every, run.graceful.agreed()
            if stopping or every and progress.global_step % every == 0 and k + 1 < steps:
                gather_state(update, ema)  # each rank kept only its slice current
                progress.epoch_totals = list(carried + comm.allreduce_sum(totals))
                on_root(comm, run.root.checkpoint, progress)
                clock.lap("checkpoint")
            if stopping:
                run.timeline.finish()      # collective: a window still open is written
                return stopped(comm, run.graceful, update, progress, run.run_dir)
        bar.close()
        train_seconds = time.perf_counter() - t_epoch
        totals = comm.allreduce_sum_(totals) + carried
        gather_state(update, ema)          # for the end-of-epoch evaluation and checkpoint
        progress.epoch, progress.step, progress.epoch_totals = epoch + 1, 0, [0.0, 0.0, 0.0]
        record = {"epoch": epoch + 1, "global_step": progress.global_step,
                  "lr": run.lr_at(progress.global_step - 1), "train_loss": totals[0] / totals[2],
                  "train_acc": totals[1] / totals[2], "world_size": comm.size,
                  "threads": run.threads, "images_per_s": (steps - first) * batch / train_seconds,
                  "seconds": {"train": train_seconds}}
        stop = on_root(comm, run.root.end_of_epoch, progress, record, clock)
        progress = comm.bcast(progress)    # rank 0 updated the best; checkpoints need it all
        if stop:
            break

    run.timeline.finish()  # collective: a window still open is written
    update.close()  # frees the shared-memory window (an ensemble trains several members)
    # A stop signal during the last epoch's validation or checkpoint has no step boundary
    # left to act on: agree on it here, and skip the test evaluation.
    complete = not run.graceful.settle() and not on_root(   # the others sleep meanwhile
        comm, run.root.final_report, progress, run.threads, run.graceful, run.timeline)
    signalled = run.graceful.settle()   # also one that reached another rank meanwhile
    run.graceful.close()
    if signalled:
        return stopped_after_training(comm, run.graceful, run.run_dir, complete)
    return 0


def stopped(comm: Comm, stop: GracefulStop, update, progress: Progress, run_dir: Path) -> int:
    """After a stop signal: the checkpoint of this step is written; say how to go on."""
    update.close()
    stop.close()
    if comm.is_root:
        path = run_dir / ck.checkpoint_name(progress.epoch, progress.step)
        # --resume RUN takes the newest name; should a later one be there, name this file.
        later = [p for p in ck.numbered_checkpoints(run_dir) if p.name > path.name]
        print(f"stopped at epoch {progress.epoch + 1} step {progress.step} by {stop.name}; "
              f"checkpoint {path}; continue with --resume {path if later else run_dir}",
              flush=True)
    return stop.exit_code


def stopped_after_training(comm: Comm, stop: GracefulStop, run_dir: Path,
                           complete: bool) -> int:
    """After a stop signal once every epoch was trained: say whether the run is complete."""
    if comm.is_root:
        print(f"stopped after the last epoch by {stop.name}; " + (
            f"final.json was written: the run {run_dir} is complete" if complete else
            f"training is complete; write final.json with --resume {run_dir}"), flush=True)
    return stop.exit_code


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
