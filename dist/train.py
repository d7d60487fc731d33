"""Data-parallel training of a hand-written numpy network over MPI.

    mpirun -n 4 python -m dist.train                       # default preset (cnn)
    python -m dist.train --preset classic                  # one process: the debugging mode
    mpirun -n 2 python -m dist.train --optim.lr 0.1 --set train.epochs=3
    mpirun -n 4 python -m dist.train --resume runs/cnn-20261122-101500
    python -m dist.train --debug                           # gradient check, finiteness checks

Every rank builds the same model from the same seed, reads its shard of each epoch
(``data.shards``), and per step: forward, loss, backward on its share of the global batch,
then the update (``dist.update``): a reduce-scatter gives each rank the summed gradient of its
own slice of the flat parameters, it takes the SGD step on that slice, and an all-gather makes
the parameters whole again on every rank -- an allreduce cut in two, with the optimizer's
work split between the ranks instead of repeated on each. The loss divides by the *global*
batch size, so the summed gradient is the single-process one: ``python -m dist.train``
follows the same trajectory as ``mpirun -n 4`` (up to float summation order). Rank 0
evaluates, logs ``runs/<name>/metrics.jsonl`` and writes the checkpoints; the other ranks wait
for it without spinning a core.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from core.deskew import deskew_raw, deskews_before_augment
from core.keyed_random import keyed_uniform, sample_keys
from core.losses import LOSSES
from core.model import Model
from core.optim import SGD
from core.schedules import make_schedule
from data.augment import random_affine
from data.errors import DataError
from data.hdf5 import open_mnist
from data.prepare import default_path, ensure_dataset
from data.shards import normalize, read_epoch_shard, read_split, split_train_val, steps_per_epoch
from dist import checkpoint as ck
from dist.comm import Comm, ExpectedError, run_main
from dist.config import help_text, load_config
from dist.debug import debug_first_step, forward_checked
from dist.evaluate import evaluate, model_from_checkpoint
from dist.update import ShardedUpdate


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
                        help="continue from a run's newest checkpoint (or a given file)")
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
    if args.resume and (args.preset or args.config):
        parser.error("--resume takes the config from the checkpoint; use --set to change fields")
    return args


def collectively(comm: Comm, fn, *args, **kwargs):
    """Run ``fn`` on every rank; if it fails with a user error on any rank, all ranks raise it."""
    try:
        result, error = fn(*args, **kwargs), None
    except (ExpectedError, DataError) as err:
        result, error = None, str(err)
    comm.agree(error is None, error or "")
    return result


def on_root(comm: Comm, fn, *args, **kwargs):
    """Run ``fn`` on rank 0 only and share its result and its errors. The other ranks wait in
    ``agree``, whose non-blocking allreduce sleeps between polls: they do not spin a core."""
    if comm.is_root:
        result = collectively(comm, fn, *args, **kwargs)
    else:
        comm.agree(True)
        result = None
    return comm.bcast(result)


def build_model(cfg, comm: Comm) -> Model:
    """Every rank builds the same model from the same seed; batch norm sums across ranks."""
    try:
        return Model(cfg.model.layers, seed=cfg.train.seed, reduce=comm.allreduce_sum)
    except ValueError as err:  # core/ names the layer and the key
        raise ExpectedError(f"model.layers: {err}") from None


def build_optimizer(cfg, model: Model, steps: int):
    """SGD on the flat arena and the learning rate as a pure function of the global step."""
    try:
        opt = SGD(model.theta.size, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov,
                  weight_decay=cfg.optim.weight_decay, decay_mask=model.decay_mask)
        lr_at = make_schedule(cfg.schedule.kind, cfg.optim.lr,
                              total_steps=cfg.train.epochs * steps,
                              warmup_steps=round(cfg.schedule.warmup_epochs * steps),
                              step_size=max(cfg.schedule.step_epochs, 1) * steps,
                              gamma=cfg.schedule.gamma, min_lr=cfg.schedule.min_lr)
    except ValueError as err:
        raise ExpectedError(f"optim/schedule: {err}") from None
    return opt, lr_at


def local_batch(cfg, shard, k: int, epoch: int):
    """This rank's part of global batch k: images (b, 28, 28, 1) float32, labels (b,) and the
    dropout noise. Random numbers are keyed by (seed, epoch, global sample index), never by
    rank, so a sample is augmented and dropped out the same way on any number of ranks."""
    lo, hi = shard.batch_offsets[k], shard.batch_offsets[k + 1]
    keys = sample_keys(cfg.train.seed, epoch, shard.indices[lo:hi])
    images = shard.images[lo:hi]                                   # uint8 (b, 28, 28)
    if deskews_before_augment(cfg.model.layers):   # upright first, then shifted and turned
        images = deskew_raw(images)
    if cfg.data.augment:
        images = random_affine(images, keys, cfg.data.max_shift, cfg.data.max_rotate,
                               cfg.data.max_scale)
    noise = lambda stream, shape: keyed_uniform(keys, stream, shape)  # noqa: E731
    return normalize(images), shard.labels[lo:hi].astype(np.int64), noise


def prepare_data(cfg) -> str:
    """The HDF5 file to train on: a named file must exist; the default is prepared on first use."""
    if cfg.data.path and not Path(cfg.data.path).is_file():
        raise ExpectedError(f"data.path={cfg.data.path}: no such file (prepare it with "
                            f"`python -m data.prepare --out {cfg.data.path}`, or leave "
                            f"data.path empty to use the per-user cache)")
    path = Path(cfg.data.path) if cfg.data.path else default_path()
    # Quiet when the file is there already; show progress when it is being prepared.
    return str(ensure_dataset(path, cfg.data.source or None, quiet=path.is_file()))


def make_run_dir(cfg) -> Path:
    """Create runs/<name> for a fresh run; refuse to reuse one that holds checkpoints."""
    name = cfg.run.name or f"{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.dir) / name
    if any(run_dir.glob("ckpt-*.h5")) or (run_dir / "metrics.jsonl").exists():
        raise ExpectedError(f"{run_dir}: run folder already exists; continue it with --resume "
                            f"{run_dir} or choose another --set run.name=...")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.run.name = name
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return run_dir


def trim_metrics(run_dir: Path, completed_epochs: int) -> None:
    """On resume, drop metric lines of epochs the checkpoint does not contain."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines()
                 if ln.strip() and json.loads(ln)["epoch"] <= completed_epochs]
        path.write_text("".join(ln + "\n" for ln in lines))


def main(comm: Comm, argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()

    # -- configuration: a preset (or a checkpoint's own config) plus overrides ---------------
    resume = None
    if args.resume:
        resume = collectively(comm, ck.load_checkpoint, args.resume)
        cfg = collectively(comm, load_config, base=resume.config, overrides=args.set)
    else:
        cfg = collectively(comm, load_config, args.preset, args.config, args.set)
    if args.debug:  # a small, fully checked run
        cfg.train.steps_per_epoch = cfg.train.steps_per_epoch or 20
        cfg.train.epochs = min(cfg.train.epochs, 2)
    batch, seed = cfg.train.batch_size, cfg.train.seed
    comm.agree(batch >= comm.size, f"train.batch_size={batch} is smaller than the number of "
               f"ranks ({comm.size}): every rank needs at least one sample per batch")
    threads = cfg.run.threads or comm.cores_per_rank
    threadpool_limits(threads)
    # Overflow shows up as a non-finite gradient, which the loop reports in one clear line
    # (and --debug pins to a layer); numpy's per-operation warnings would only add noise.
    np.seterr(over="ignore", invalid="ignore", divide="ignore")

    # -- model and optimizer (every rank builds the same ones from the seed) ----------------
    model = collectively(comm, build_model, cfg, comm)
    cfg.model.layers = model.spec  # defaults filled in: this is what checkpoints compare
    # -- data: rank 0 prepares MNIST on first use, everyone validates the same file ----------
    data_path = on_root(comm, prepare_data, cfg)
    # rank 0's ensure_dataset has just checked the contents; the others check the structure
    info = collectively(comm, open_mnist, data_path, deep=False)
    fingerprint = info.fingerprint
    train_idx, _ = split_train_val(cfg.data.split_seed, cfg.data.val_size, info.sizes["train"])
    steps = collectively(comm, steps_per_epoch, len(train_idx), batch)
    steps = min(steps, cfg.train.steps_per_epoch or steps)

    opt, lr_at = collectively(comm, build_optimizer, cfg, model, steps)
    update = ShardedUpdate(comm, model.theta, model.grad, opt)   # each rank updates a slice
    loss_fn = LOSSES[cfg.model.loss]

    # -- where we start: fresh, or exactly where a checkpoint left off -----------------------
    epoch0, step0, global_step = 0, 0, 0
    best_acc, best_epoch, bad_epochs = -np.inf, -1, 0
    if resume is not None:
        collectively(comm, ck.check_compatible, resume, expect_spec=model.spec,
                     expect_sizes=(model.theta.size, model.state.size),
                     expect_fingerprint=fingerprint)
        model.theta[...], model.state[...] = resume.theta, resume.state
        opt.velocity[...] = resume.velocity
        epoch0, step0, global_step = resume.epoch, resume.step, resume.global_step
        best_acc, best_epoch, bad_epochs = resume.best_metric, resume.best_epoch, resume.bad_epochs
        run_dir = resume.path.parent
        if comm.is_root:
            trim_metrics(run_dir, epoch0)
    else:
        comm.bcast_array_(model.theta)  # identical already; guards against heterogeneous nodes
        run_dir = Path(on_root(comm, lambda: str(make_run_dir(cfg))))
        cfg.run.name = run_dir.name

    if comm.is_root:
        d = model.describe()
        print(f"mpigrad: {comm.size} rank(s) x {threads} BLAS thread(s), preset "
              f"{cfg.preset!r}, {d['params']:,} parameters, {d['flops_per_sample'] / 1e6:.1f} "
              f"MFLOP/image, global batch {batch}, {steps} steps/epoch, run {run_dir}"
              + (f", resuming at epoch {epoch0 + 1} step {step0}" if resume else ""), flush=True)
        val_set = read_split(data_path, "val", cfg.data.split_seed, cfg.data.val_size)
        test_set = read_split(data_path, "test", cfg.data.split_seed, cfg.data.val_size)

    def checkpoint_now(epoch: int, step: int, also_best: bool = False) -> None:
        state = ck.Checkpoint(run_dir / ck.checkpoint_name(epoch, step), model.theta,
                              model.state, opt.velocity, epoch, step, global_step, best_acc,
                              best_epoch, bad_epochs, cfg.to_dict(), model.spec, fingerprint,
                              comm.size)
        ck.save_checkpoint(state.path, state)
        if also_best:
            ck.save_checkpoint(run_dir / "best.h5", state)
        ck.prune_checkpoints(run_dir, cfg.run.keep_last)

    # -- the loop -------------------------------------------------------------------------------
    for epoch in range(epoch0, cfg.train.epochs):
        timer = {"compute": 0.0, "allreduce": 0.0, "data": 0.0, "eval": 0.0, "checkpoint": 0.0}
        t_epoch = t = time.perf_counter()
        shard = collectively(comm, read_epoch_shard, data_path, seed, epoch, comm.rank,
                             comm.size, batch, split_seed=cfg.data.split_seed,
                             val_size=cfg.data.val_size)
        timer["data"] += time.perf_counter() - t
        totals = np.zeros(3)  # loss sum, correct, samples (this rank)
        first = step0 if epoch == epoch0 else 0
        bar = tqdm(total=steps, initial=first, desc=f"epoch {epoch + 1}", leave=False,
                   disable=not (comm.is_root and cfg.run.progress and sys.stderr.isatty()))
        for k in range(first, steps):
            t0 = time.perf_counter()
            lr = lr_at(global_step)
            x, y, noise = local_batch(cfg, shard, k, epoch)
            t1 = time.perf_counter()
            if args.debug and global_step == 0:
                debug_first_step(comm, model, x, y, cfg.model.loss, batch, noise)
            out = forward_checked(model, x, noise) if args.debug else \
                model.forward(x, train=True, noise=noise)
            loss, dout = loss_fn(out, y, divisor=batch)  # sum over local samples / global B
            model.backward(dout)                          # fills model.grad (flat)
            t2 = time.perf_counter()
            update.reduce_gradient()       # reduce-scatter: the summed gradient of my slice
            t3 = time.perf_counter()
            update.step(lr)                # SGD on my slice of theta (dist/update.py)
            t4 = time.perf_counter()
            update.gather_parameters()     # all-gather: theta whole, the same on every rank
            t5 = time.perf_counter()
            if not update.finite():        # the same theta everywhere: the same verdict
                raise ExpectedError(f"non-finite loss/gradient at epoch {epoch + 1} step {k + 1} "
                                    f"(lr {lr:.3g}); no checkpoint written from it. Try a "
                                    f"smaller optim.lr or run with --debug", everywhere=True)
            global_step += 1
            totals += (loss * batch, (out.argmax(axis=1) == y).sum(), len(y))
            t6 = time.perf_counter()
            timer["data"] += t1 - t0
            timer["compute"] += (t2 - t1) + (t4 - t3) + (t6 - t5)
            timer["allreduce"] += (t3 - t2) + (t5 - t4)
            bar.update(1)
            if cfg.run.checkpoint_every and global_step % cfg.run.checkpoint_every == 0 \
                    and k + 1 < steps:
                t = time.perf_counter()
                update.gather_velocity()   # each rank kept only its slice current
                on_root(comm, checkpoint_now, epoch, k + 1)
                timer["checkpoint"] += time.perf_counter() - t
        bar.close()
        train_time = time.perf_counter() - t_epoch
        comm.allreduce_sum_(totals)
        update.gather_velocity()           # for the end-of-epoch checkpoint

        # -- epoch end: rank 0 evaluates, logs and checkpoints; the others sleep meanwhile ----
        def end_of_epoch() -> bool:
            nonlocal best_acc, best_epoch, bad_epochs
            t = time.perf_counter()
            with threadpool_limits(comm.root_threads):  # the other ranks sleep meanwhile
                val = evaluate(model, *val_set[:2], cfg.model.loss) if len(val_set[1]) else None
                last = epoch + 1 == cfg.train.epochs
                every = cfg.train.eval_test_every
                test = evaluate(model, *test_set[:2], cfg.model.loss) \
                    if last or (every and (epoch + 1) % every == 0) else None
            timer["eval"] += time.perf_counter() - t
            improved = val is not None and val["acc"] > best_acc
            if improved:
                best_acc, best_epoch, bad_epochs = val["acc"], epoch + 1, 0
            else:
                bad_epochs += 1
            patience = cfg.train.patience
            stop = bool(patience and val is not None and bad_epochs >= patience)
            t = time.perf_counter()
            checkpoint_now(epoch + 1, 0, also_best=improved or val is None)
            timer["checkpoint"] += time.perf_counter() - t
            record = {
                "epoch": epoch + 1, "global_step": global_step, "lr": lr_at(global_step - 1),
                "train_loss": totals[0] / totals[2], "train_acc": totals[1] / totals[2],
                "val_loss": val and val["loss"], "val_acc": val and val["acc"],
                "test_loss": test and test["loss"], "test_acc": test and test["acc"],
                "images_per_s": (steps - first) * batch / train_time,
                "seconds": {**timer, "train": train_time, "wall": time.perf_counter() - start},
                "world_size": comm.size, "threads": threads, "early_stop": stop}
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"epoch {epoch + 1}/{cfg.train.epochs}  train loss {record['train_loss']:.4f} "
                  f"acc {100 * record['train_acc']:.2f}%"
                  + (f"  val loss {val['loss']:.4f} acc {100 * val['acc']:.2f}%" if val else "")
                  + (f"  test acc {100 * test['acc']:.2f}%" if test else "")
                  + f"  lr {record['lr']:.4g}  {record['images_per_s']:.0f} img/s  "
                  f"(compute {timer['compute']:.1f}s, allreduce {timer['allreduce']:.1f}s, "
                  f"data {timer['data']:.1f}s, eval {timer['eval']:.1f}s)"
                  + ("  early stop" if stop else ""), flush=True)
            return stop

        stop = on_root(comm, end_of_epoch)
        if stop:
            break

    update.close()  # frees the shared-memory window (an ensemble trains several members)

    def final_report() -> None:  # the model that counts is the one validation chose: best.h5
        best_model, _ = model_from_checkpoint(run_dir / "best.h5", fingerprint)
        with threadpool_limits(comm.root_threads):
            test = evaluate(best_model, *test_set[:2], cfg.model.loss)
        summary = {"run": str(run_dir), "best_epoch": best_epoch, "best_val_acc": best_acc,
                   "test_acc": test["acc"], "test_loss": test["loss"],
                   "wall_seconds": time.perf_counter() - start, "world_size": comm.size,
                   "threads": threads, "preset": cfg.preset}
        (run_dir / "final.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"done in {summary['wall_seconds']:.0f}s: best.h5 (epoch {best_epoch}, validation "
              f"{100 * best_acc:.2f}%) has test accuracy {100 * test['acc']:.2f}%; run {run_dir}",
              flush=True)

    on_root(comm, final_report)  # the other ranks sleep meanwhile instead of spinning in Finalize


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
