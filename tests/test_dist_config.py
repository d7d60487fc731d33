"""Config loading and validation, in process: every mistake is one line that names the key."""
import json

import numpy as np
import pytest

from dist.errors import ExpectedError
from dist.config import CONFIG_DIR, help_text, load_config, parse_override


def test_every_preset_loads_and_validates():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    assert {"classic", "mlp", "cnn"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.preset == name and cfg.model.layers


def test_default_preset_is_cnn():
    assert load_config().preset == "cnn"


def test_overrides_are_typed_toml_values():
    cfg = load_config("mlp", overrides=["optim.lr=0.5", "train.epochs=3", "optim.nesterov=false",
                                        "schedule.kind=step", "schedule.step_epochs=2",
                                        "model.layers=[{type='flatten'},{type='dense',out=10}]"])
    assert cfg.optim.lr == 0.5 and cfg.train.epochs == 3 and cfg.optim.nesterov is False
    assert cfg.schedule.kind == "step"
    assert cfg.model.layers == [{"type": "flatten"}, {"type": "dense", "out": 10}]
    assert parse_override("run.dir=runs/x")[:2] == ("run.dir", "runs/x")
    assert load_config("cnn", overrides=["run.name=nan"]).run.name == "nan"
    assert load_config("cnn", overrides=["run.name=2024"]).run.name == "2024"


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "unknown key 'optim.lrr'"),
    ("optimizer.lr=0.1", "unknown key 'optimizer.lr'"),
    ("train.epochs=abc", "train.epochs must be an integer, got 'abc'"),
    ("train.epochs=2.5", "train.epochs must be an integer"),
    ("optim.nesterov=1", "optim.nesterov must be true or false"),
    ("optim.lr=-1", "optim.lr=-1.0: must be a positive number"),
    ("optim.momentum=1.0", "optim.momentum=1.0: must be in [0, 1)"),
    ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
    ("schedule.kind=linear", "schedule.kind='linear'"),
    ("model.loss=hinge", "model.loss='hinge'"),
    ("model.layers=[]", "model.layers=[]"),
    ("run.name=a/b", "run.name='a/b'"),
    ("run.split=layers", "--set run.split: run.split was removed: a rank's threads always"),
    ("data.elastic_alpha=-1", "data.elastic_alpha=-1.0: must be in 0..100"),
    ("data.elastic_sigma=30", "data.elastic_sigma=30.0: must be in 0..20"),
    ("data.elastic_alpha=34", "data.elastic_sigma=0.0: must be at least 0.5 pixels"),
    ("optim.ema_decay=0.2", "optim.ema_decay=0.2: must be 0 (off) or in [0.5, 1)"),
    ("optim.ema_decay=1", "optim.ema_decay=1.0: must be 0 (off) or in [0.5, 1)"),
    ("schedule.cycles=3", "schedule.cycles=3: needs schedule.kind = 'cyclic'"),
    ("schedule.cycles=0", "schedule.cycles=0: must be >= 1"),
    ("train.report_test=0", "train.report_test must be true or false"),
    ("optim.lr", "expected KEY=VALUE"),
    ("model.label_smoothing=0.5", "model.label_smoothing=0.5: must be in [0, 0.5)"),
    ("schedule.kind=triangle", "schedule.kind='triangle'"),
    ("optim.bn_lr_scale=0", "optim.bn_lr_scale=0.0: must be in (0, 100]"),
    ("optim.bn_lr_scale=101", "optim.bn_lr_scale=101.0: must be in (0, 100]"),
    ("optim.bn_lr_scale=nan", "optim.bn_lr_scale must be a finite number, got nan"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ExpectedError) as err:
        load_config("cnn", overrides=[override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_elastic_distortion_needs_augmentation_on():
    with pytest.raises(ExpectedError, match=r"data.elastic_alpha=34.0: needs data.augment = true"):
        load_config("mlp", overrides=["data.elastic_alpha=34", "data.elastic_sigma=4"])
    cfg = load_config("best", overrides=["data.elastic_alpha=34", "data.elastic_sigma=4"])
    assert (cfg.data.elastic_alpha, cfg.data.elastic_sigma) == (34.0, 4.0)


def test_cyclic_cycles_must_divide_the_epochs():
    with pytest.raises(ExpectedError, match=r"schedule.cycles=4: must divide train.epochs=6"):
        load_config("cnn", overrides=["schedule.kind=cyclic", "schedule.cycles=4"])
    cfg = load_config("cnn", overrides=["schedule.kind=cyclic", "schedule.cycles=3"])
    assert (cfg.schedule.kind, cfg.schedule.cycles) == ("cyclic", 3)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[optim]\nlearning_rate = 0.1\n')
    with pytest.raises(ExpectedError, match=r"mine.toml: unknown key 'optim.learning_rate'"):
        load_config(config_file=str(path))
    path.write_text('[optim\n')
    with pytest.raises(ExpectedError, match=r"mine.toml: not valid TOML"):
        load_config(config_file=str(path))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ExpectedError, match=r"--preset nope: no such preset \(known: .*cnn"):
        load_config("nope")


def test_saved_config_json_reproduces_the_run_config(tmp_path):
    cfg = load_config("classic", overrides=["optim.lr=0.7"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    again = load_config(config_file=str(path))
    assert again.to_dict() == cfg.to_dict()


def test_help_lists_every_field():
    text = help_text()
    for key in ("optim.lr", "optim.bn_lr_scale", "train.batch_size", "schedule.warmup_epochs",
                "run.threads", "data.val_size", "model.layers"):
        assert key in text


def test_bn_lr_scale_reaches_the_optimizer_only_when_set():
    # The default builds no scale vector (the plain step); 4 puts 4 on batch norm's elements.
    from core.model import Model
    from dist.train import build_optimizer
    cfg = load_config("fast")
    model = Model(cfg.model.layers)
    assert cfg.optim.bn_lr_scale == 1.0 and build_optimizer(cfg, model, 10)[0].lr_scale is None
    opt, _ = build_optimizer(load_config("fast", overrides=["optim.bn_lr_scale=4"]), model, 10)
    assert 0 < model.bn_mask.sum() < model.bn_mask.size
    assert (opt.lr_scale == np.where(model.bn_mask == 1, 4, 1)).all()


def test_a_saved_config_with_a_retired_key_still_loads():
    # Checkpoints written before run.split was removed carry it; they resume as they are.
    saved = load_config("cnn").to_dict()
    saved["run"]["split"] = "layers"
    assert load_config(base=saved).to_dict() == load_config("cnn").to_dict()
