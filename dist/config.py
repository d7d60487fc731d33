"""Training configuration: typed sections, loaded from a TOML preset plus command-line overrides.

A config is seven small dataclasses (``[model] [data] [optim] [schedule] [train] [run]
[comm]``). A preset in ``launch/configs/NAME.toml`` sets some fields; the rest keep the defaults
below. A preset may start from another one (``base = "best"`` at its top) and set only what
differs; ``[model] prepend = [...]`` puts layers in front of the base's (a deskew entry, say).
Overrides come from the command line as ``--set optim.lr=0.05`` or ``--optim.lr 0.05`` (the value
is read as a TOML value, so ``--set model.layers=[{type="dense",out=10}]`` works too).

Every mistake is one line that names the key: unknown keys, wrong types, impossible values.
The resolved config is saved with the run as JSON, and ``--config runs/X/config.json`` repeats it.

See all fields:  python -m dist.train --help
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from core.schedules import KINDS as SCHEDULE_KINDS
from core.spec import build_layers, memory_per_layer
from dist.errors import ExpectedError

# The update kinds (dist/update.py imports MPI, so its list is repeated here).
KINDS = ("auto", "allreduce", "sharded", "shared-memory", "overlapped", "hierarchical")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "launch" / "configs"
DEFAULT_PRESET = "cnn"


def _f(default, help_text, **kw):
    return field(default=default, metadata={"help": help_text}, **kw)


@dataclass
class ModelConfig:
    layers: list = _f(None, "list of layer tables, e.g. [{type='dense', out=10}] (see core/)")
    loss: str = _f("xent", "'xent' (softmax cross-entropy) or 'mse' (classic sigmoid net)")
    label_smoothing: float = _f(0.0, "'xent' only: train towards (1 - e) onehot + e / 10 "
                                     "instead of onehot (0 = off; core/losses.py)")


@dataclass
class DataConfig:
    path: str = _f("", "HDF5 file; '' = $MPIGRAD_DATA or ~/.cache/mpigrad/mnist.h5")
    source: str = _f("", "local folder of the 4 MNIST IDX files to prepare from ('' = auto)")
    val_size: int = _f(5000, "training images held out for validation / early stopping")
    split_seed: int = _f(0, "seed of the train/validation split (fixed across runs)")
    augment: bool = _f(False, "random affine augmentation of training images")
    max_shift: float = _f(2.0, "augmentation: largest shift in pixels")
    max_rotate: float = _f(10.0, "augmentation: largest rotation in degrees")
    max_scale: float = _f(0.1, "augmentation: largest relative change of size")
    elastic_alpha: float = _f(0.0, "augmentation: elastic distortion strength in pixels (0 = off)")
    elastic_sigma: float = _f(0.0, "augmentation: elastic smoothing width in pixels")


@dataclass
class OptimConfig:
    lr: float = _f(0.05, "base learning rate (for the global batch)")
    momentum: float = _f(0.9, "momentum coefficient in [0, 1)")
    nesterov: bool = _f(False, "Nesterov momentum instead of heavy-ball")
    weight_decay: float = _f(0.0, "L2 weight decay on weights (not biases / batch-norm)")
    bn_lr_scale: float = _f(1.0, "batch-norm gamma and beta train at this multiple of the "
                                 "learning rate (1 = the same lr; core/optim.py)")
    ema_decay: float = _f(0.0, "moving average of the weights, e.g. 0.999; the average is the "
                               "model (0 = off; core/ema.py)")


@dataclass
class ScheduleConfig:
    kind: str = _f("cosine", "'constant', 'step', 'cosine' or 'cyclic' (cosine restarts)")
    warmup_epochs: float = _f(0.0, "linear warmup length in epochs")
    step_epochs: int = _f(0, "'step': multiply lr by gamma every this many epochs")
    gamma: float = _f(0.1, "'step': decay factor")
    min_lr: float = _f(0.0, "'cosine', 'cyclic': lowest learning rate")
    cycles: int = _f(1, "'cyclic': cosine cycles over the run, a snapshot at each end")


@dataclass
class TrainConfig:
    epochs: int = _f(10, "number of epochs")
    batch_size: int = _f(128, "global batch size (split over the ranks)")
    seed: int = _f(0, "seed of the initial weights, epoch order and dropout")
    steps_per_epoch: int = _f(0, "cap on steps per epoch (0 = the whole epoch)")
    patience: int = _f(0, "early stopping: epochs without validation gain (0 = off)")
    eval_test_every: int = _f(1, "evaluate the test set every k epochs (and at the end)")
    report_test: bool = _f(True, "evaluate the test set at all (false: validation only, "
                                 "for runs that decide something)")


@dataclass
class RunConfig:
    name: str = _f("", "run name; '' = <preset>-<date>-<time>")
    dir: str = _f("runs", "parent folder of run folders")
    checkpoint_every: int = _f(0, "also checkpoint every k steps (0 = at epoch ends only)")
    keep_last: int = _f(3, "checkpoints to keep (plus best.h5)")
    threads: int = _f(0, "threads per rank, each training a copy of the model on its rows "
                      "of the batch (core/replicas.py; 0 = cores per node / ranks per node)")
    progress: bool = _f(True, "tqdm progress bar on rank 0 (only when on a terminal)")
    tensorboard: bool = _f(False, "also write each epoch's metrics as TensorBoard event files "
                           "(dist/tensorboard.py)")
    timeline: int = _f(0, "steps to record as a per-rank timeline, timeline.json in the run "
                       "folder (Chrome trace; launch.report draws it; 0 = off; dist/timeline.py)")
    timeline_start: int = _f(10, "the global step at which the timeline's window opens")


@dataclass
class CommConfig:
    update: str = _f("auto", "gradient sum + step: 'auto' (by topology), 'allreduce', "
                     "'sharded', 'shared-memory', 'overlapped' or 'hierarchical' (dist/update.py)")
    overlap: bool = _f(True, "across hosts ('auto'): send gradient buckets while backward "
                       "still runs (the 'overlapped' update)")
    bucket_mb: float = _f(0.5, "overlapped update: size of a gradient bucket in MiB (whole layers)")
    hierarchical: bool = _f(True, "several ranks on each of several hosts ('auto'): sum within "
                            "the host first (shared memory), then across hosts; false = flat")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    preset: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTION_CLASSES = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
                    "schedule": ScheduleConfig, "train": TrainConfig, "run": RunConfig,
                    "comm": CommConfig}


# -- typed assignment ------------------------------------------------------------------------
def _check_type(key: str, value, expected: type, where: str):
    """Return ``value`` as the field's type or raise one line naming the key."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, float) and not math.isfinite(value):
        raise ExpectedError(f"{where}: {key} must be a finite number, got {value!r}")
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok:
        name = {int: "an integer", float: "a number", bool: "true or false",
                str: "a string", list: "a list"}[expected]
        raise ExpectedError(f"{where}: {key} must be {name}, got {value!r}")
    return value


# Keys that earlier versions wrote into configs and checkpoints, and what became of them: a
# saved config or checkpoint that holds one still loads (the key is dropped); --set names it.
RETIRED = {"run.split": "a rank's threads always train one model copy each (core/replicas.py)"}


def _set(cfg: Config, key: str, value, where: str, raw: str | None = None) -> None:
    if key in RETIRED:
        if raw is None:                         # from a saved config or checkpoint
            return
        raise ExpectedError(f"{where}: {key} was removed: {RETIRED[key]}")
    section, _, name = key.partition(".")
    if section not in _SECTION_CLASSES or not name:
        raise ExpectedError(f"{where}: unknown key '{key}' (sections: {', '.join(_SECTION_CLASSES)})")
    types = {f.name: f.type for f in dataclasses.fields(_SECTION_CLASSES[section])}
    if name not in types:
        raise ExpectedError(f"{where}: unknown key '{key}' (known in [{section}]: "
                            f"{', '.join(types)})")
    expected = {"int": int, "float": float, "bool": bool, "str": str, "list": list}[types[name]]
    if expected is str and raw is not None and not isinstance(value, str):
        value = raw  # --set run.name=nan or =2024 means the text, not a number
    setattr(getattr(cfg, section), name, _check_type(key, value, expected, where))


def _apply_table(cfg: Config, table: dict, where: str) -> None:
    for section, values in table.items():
        if section in ("preset", "base"):
            continue
        if not isinstance(values, dict):
            raise ExpectedError(f"{where}: '{section}' must be a table like [{section}]")
        for name, value in values.items():
            _set(cfg, f"{section}.{name}", value, where)


def read_file(path: Path) -> dict:
    """Read a TOML preset or a saved config.json into a plain dict."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ExpectedError(f"{path}: cannot read config ({err.strerror or err})") from None
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ExpectedError(f"{path}: not valid {path.suffix[1:].upper()}: {err}") from None


def parse_override(text: str) -> tuple[str, object, str]:
    """'optim.lr=0.05' -> ('optim.lr', 0.05, '0.05'): the value read as TOML (bare words are
    strings), and the raw text for string fields."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ExpectedError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as cosine or runs/x
    return key.strip(), value, raw


def load_config(preset: str | None = None, config_file: str | None = None,
                overrides: list[str] = (), base: dict | None = None) -> Config:
    """Resolve a config: defaults <- base dict (a checkpoint's) or preset/file <- overrides."""
    cfg = Config()
    if base is not None:
        _apply_table(cfg, base, "checkpoint config")
        cfg.preset = base.get("preset", "")
    elif config_file:
        path = Path(config_file)
        _apply_table(cfg, read_file(path), str(path))
        cfg.preset = read_file(path).get("preset", "") or path.stem
    else:
        cfg.preset = preset or DEFAULT_PRESET
        _apply_preset(cfg, cfg.preset, seen=())
    for text in overrides:
        key, value, raw = parse_override(text)
        _set(cfg, key, value, f"--set {key}", raw)
    validate(cfg)
    return cfg


def _apply_preset(cfg: Config, name: str, seen: tuple) -> None:
    """Apply launch/configs/NAME.toml, after the preset it names as ``base`` (if any)."""
    path = CONFIG_DIR / f"{name}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise ExpectedError(f"--preset {name}: no such preset (known: {known})")
    where = str(path.relative_to(CONFIG_DIR.parents[1]))
    table = read_file(path)
    base = table.get("base")
    if base is not None:
        if not isinstance(base, str) or base in seen + (name,):
            raise ExpectedError(f"{where}: base={base!r} must name another preset, without a loop")
        _apply_preset(cfg, base, seen + (name,))
    prepend = table.get("model", {}).pop("prepend", [])
    if not isinstance(prepend, list) or (prepend and base is None):
        raise ExpectedError(f"{where}: model.prepend must be a list of layer tables, in a preset "
                            f"with a base")
    _apply_table(cfg, table, where)
    cfg.model.layers = prepend + cfg.model.layers


def validate(cfg: Config) -> None:
    """Impossible values, one line each. (What depends on the training set and the ranks:
    ``check_for_world``.)"""
    def need(cond: bool, key: str, value, why: str):
        if not cond:
            raise ExpectedError(f"{key}={value!r}: {why}")

    m, d, o, s, t, r = cfg.model, cfg.data, cfg.optim, cfg.schedule, cfg.train, cfg.run
    need(isinstance(m.layers, list) and len(m.layers) > 0 and
         all(isinstance(x, dict) for x in m.layers), "model.layers", m.layers,
         "must be a non-empty list of layer tables")
    need(m.loss in ("xent", "mse"), "model.loss", m.loss, "must be 'xent' or 'mse'")
    need(0 <= m.label_smoothing < 0.5, "model.label_smoothing", m.label_smoothing,
         "must be in [0, 0.5)")
    need(m.label_smoothing == 0 or m.loss == "xent", "model.label_smoothing",
         m.label_smoothing, "needs model.loss = 'xent'")
    need(0 <= d.val_size <= 20000, "data.val_size", d.val_size, "must be in 0..20000")
    need(d.split_seed >= 0, "data.split_seed", d.split_seed, "must be >= 0")
    need(0 <= d.max_shift <= 10, "data.max_shift", d.max_shift, "must be in 0..10 pixels")
    need(0 <= d.max_rotate <= 180, "data.max_rotate", d.max_rotate, "must be in 0..180 degrees")
    need(0 <= d.max_scale < 1, "data.max_scale", d.max_scale, "must be in [0, 1)")
    need(0 <= d.elastic_alpha <= 100, "data.elastic_alpha", d.elastic_alpha,
         "must be in 0..100 pixels (0 = no elastic distortion)")
    need(0 <= d.elastic_sigma <= 20, "data.elastic_sigma", d.elastic_sigma,
         "must be in 0..20 pixels")
    need(d.elastic_alpha == 0 or d.elastic_sigma >= 0.5, "data.elastic_sigma", d.elastic_sigma,
         "must be at least 0.5 pixels when data.elastic_alpha > 0 (narrower is pixel noise)")
    need(d.elastic_alpha == 0 or d.augment, "data.elastic_alpha", d.elastic_alpha,
         "needs data.augment = true (elastic distortion is part of augmentation)")
    need(math.isfinite(o.lr) and o.lr > 0, "optim.lr", o.lr, "must be a positive number")
    need(0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)")
    need(not o.nesterov or o.momentum > 0, "optim.nesterov", o.nesterov, "needs momentum > 0")
    need(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    need(0 < o.bn_lr_scale <= 100, "optim.bn_lr_scale", o.bn_lr_scale, "must be in (0, 100]")
    need(o.ema_decay == 0 or 0.5 <= o.ema_decay < 1, "optim.ema_decay", o.ema_decay,
         "must be 0 (off) or in [0.5, 1)")
    need(s.kind in SCHEDULE_KINDS, "schedule.kind", s.kind,
         "must be " + ", ".join(map(repr, SCHEDULE_KINDS)))
    need(s.cycles >= 1, "schedule.cycles", s.cycles, "must be >= 1")
    need(s.kind == "cyclic" or s.cycles == 1, "schedule.cycles", s.cycles,
         "needs schedule.kind = 'cyclic'")
    need(t.epochs % s.cycles == 0, "schedule.cycles", s.cycles,
         f"must divide train.epochs={t.epochs} (a snapshot at the end of each cycle's last epoch)")
    need(s.warmup_epochs >= 0, "schedule.warmup_epochs", s.warmup_epochs, "must be >= 0")
    need(s.kind != "step" or s.step_epochs > 0, "schedule.step_epochs", s.step_epochs,
         "must be > 0 when schedule.kind = 'step'")
    need(0 < s.gamma <= 1, "schedule.gamma", s.gamma, "must be in (0, 1]")
    need(0 <= s.min_lr <= o.lr, "schedule.min_lr", s.min_lr, "must be in [0, optim.lr]")
    need(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    need(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    need(t.seed >= 0, "train.seed", t.seed, "must be >= 0")
    need(t.steps_per_epoch >= 0, "train.steps_per_epoch", t.steps_per_epoch, "must be >= 0")
    need(t.patience >= 0, "train.patience", t.patience, "must be >= 0")
    need(t.eval_test_every >= 0, "train.eval_test_every", t.eval_test_every, "must be >= 0")
    need(r.checkpoint_every >= 0, "run.checkpoint_every", r.checkpoint_every, "must be >= 0")
    need(r.keep_last >= 1, "run.keep_last", r.keep_last, "must be >= 1")
    need(r.threads >= 0, "run.threads", r.threads, "must be >= 0")
    need(0 <= r.timeline <= 1000, "run.timeline", r.timeline, "must be in 0..1000 steps (0 = off)")
    need(r.timeline_start >= 0, "run.timeline_start", r.timeline_start, "must be >= 0")
    need(cfg.comm.update in KINDS, "comm.update", cfg.comm.update,
         f"must be one of {', '.join(KINDS)}")
    need(0 < cfg.comm.bucket_mb <= 1024, "comm.bucket_mb", cfg.comm.bucket_mb,
         "must be in (0, 1024] MiB")
    need("/" not in r.name and r.name not in (".", ".."), "run.name", r.name,
         "must be a plain folder name (use run.dir for the parent)")


# The classes of MNIST: what the last layer must output for the losses in core/losses.py.
CLASSES = 10


def physical_memory() -> int:
    """Bytes of RAM of this node."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_model(spec, batch: int, copies: int = 1, where: str = "model.layers",
                memory: int | None = None) -> None:
    """The model end to end from its shapes alone, before any array exists: it builds, its
    output is the 10 class scores, and ``copies`` of it (the ranks on this node) training on
    ``batch`` samples each fit in this node's RAM. Each failure is one line naming the layer."""
    try:
        _, layers = build_layers(spec, (28, 28, 1))
    except ValueError as err:   # core/ names the layer and the key
        raise ExpectedError(f"{where}: {err}") from None
    last = layers[-1]
    if last.out_shape != (CLASSES,):
        raise ExpectedError(f"{where}: the last layer, {last.index} ({last.type_name}), outputs "
                            f"shape {last.out_shape}; the loss needs the {CLASSES} class scores "
                            f"(end with a dense layer of out={CLASSES})")
    sizes = memory_per_layer(layers, batch)
    need, have = copies * sum(sizes), memory or physical_memory()
    if need > have:
        big = layers[max(range(len(sizes)), key=sizes.__getitem__)]
        raise ExpectedError(
            f"{where}: layer {big.index} ({big.type_name}, output {big.out_shape}) alone needs "
            f"{copies * max(sizes) / 1e9:.3g} GB; the model ~{need / 1e9:.3g} GB for "
            f"{copies} rank(s) of {batch} samples, more than this node's {have / 1e9:.3g} GB")


def check_for_world(cfg: Config, ranks: int, ranks_on_node: int) -> None:
    """Checks that need the number of ranks: every rank needs a sample of each batch, and
    the model must fit ``ranks_on_node`` times into the node's memory."""
    batch = cfg.train.batch_size
    if batch < ranks:
        raise ExpectedError(f"train.batch_size={batch} is smaller than the number of ranks "
                            f"({ranks}): every rank needs at least one sample per batch")
    rows, threads = -(-batch // ranks), cfg.run.threads
    if threads > rows:   # checked before a model copy per thread is allocated
        raise ExpectedError(f"run.threads={threads} is more than a rank's {rows} rows of a "
                            f"batch (train.batch_size={batch} over {ranks} rank(s)): each "
                            f"thread trains a model copy on its own rows")
    cores = os.cpu_count() or 1
    if threads > 4 * cores:
        raise ExpectedError(f"run.threads={threads} is more than 4 per core of this node's "
                            f"{cores}: each thread is a model copy; 0 = the cores per rank")
    check_model(cfg.model.layers, rows, copies=ranks_on_node)


def check_batch_fits(cfg: Config, n_train: int) -> None:
    """The global batch against the training set (known once the data file is open)."""
    if cfg.train.batch_size > n_train:
        raise ExpectedError(f"train.batch_size={cfg.train.batch_size} is larger than the "
                            f"training set ({n_train} images after holding out data.val_size="
                            f"{cfg.data.val_size} for validation)")


def help_text() -> str:
    """All fields with defaults and meaning, for ``--help``."""
    lines = ["config fields (override with --set SECTION.KEY=VALUE or --SECTION.KEY VALUE):"]
    for section, cls in _SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            default = "(from preset)" if f.default is None else repr(f.default)
            lines.append(f"  {section}.{f.name:<16} {default:<14} {f.metadata['help']}")
    return "\n".join(lines)
