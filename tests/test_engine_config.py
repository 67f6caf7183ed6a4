"""Config: YAML, base-file inheritance, dotted overrides, errors that name the key; schedule values."""

import itertools
import math

import pytest
import torch

from eakd.engine.config import Config, ConfigError, dump_config, load_config
from eakd.engine.optim import build_optimizer, build_scheduler, lr_factor


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_and_run_dir():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.optim.name == "sgd" and cfg.train.mixed_precision == "no"
    assert str(cfg.run_dir) == "runs/run"


def test_inheritance_and_overrides(tmp_path):
    (tmp_path / "base").mkdir()
    write(
        tmp_path / "base" / "common.yaml",
        "optim: {lr: 0.1, momentum: 0.8}\ndistill: {hparams: {temperature: 4}}\n",
    )
    write(tmp_path / "mid.yaml", "base: base/common.yaml\noptim: {lr: 0.05}\ntrain: {epochs: 3}\n")
    cfg_file = write(
        tmp_path / "exp.yaml",
        "_base_: mid.yaml\nexperiment: {name: x}\n"
        "distill: {method: dkd, hparams: {beta: 8}}\noptim: {weight_decay: 5e-4}\n",
    )
    cfg = load_config(
        cfg_file,
        ["optim.lr=0.01", "schedule.milestones=[2, 3]", "model.teacher=null", "distill.hparams.alpha=0.5"],
    )
    assert cfg.optim.lr == 0.01 and cfg.optim.momentum == 0.8  # base kept where not overridden
    assert cfg.optim.weight_decay == 5e-4  # "5e-4" (a YAML string) read as a float
    assert cfg.train.epochs == 3 and cfg.experiment.name == "x"
    assert cfg.schedule.milestones == [2.0, 3.0]
    assert cfg.model.teacher is None
    assert cfg.distill.hparams == {"temperature": 4, "beta": 8, "alpha": 0.5}
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=0.1"], "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
        (["nosuch.key=1"], "unknown config key 'nosuch'"),
        (["optim.lr=fast"], "config key 'optim.lr': input should be a valid number, got str ('fast')"),
        (["train.epochs=2.5"], "config key 'train.epochs': input should be a valid integer, got float"),
        (
            ["train.deterministic=1"],
            "config key 'train.deterministic': input should be a valid boolean, got int",
        ),
        (
            ["train.mixed_precision=fp8"],
            "config key 'train.mixed_precision': input should be 'no', 'bf16' or",
        ),
        (
            ["schedule.milestones=[1, x]"],
            "config key 'schedule.milestones[1]': input should be a valid number",
        ),
        (["optim=3"], "config key 'optim': input should be a dictionary"),
        (["optim.lr=null"], "config key 'optim.lr': input should be a valid number, got NoneType"),
        (["train.epoch=3"], "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
        (["train.epochs=0"], "config key 'train.epochs': input should be greater than 0, got int (0)"),
        (["train.batch_size=0"], "config key 'train.batch_size': input should be greater than 0"),
        (["optim.lr=-0.1"], "config key 'optim.lr': input should be greater than or equal to 0"),
        (["optim.lr=.nan"], "config key 'optim.lr': input should be a finite number"),
        (["data.train_subset=0"], "config key 'data.train_subset': input should be greater than 0"),
        (["distill.tau=0"], "config key 'distill.tau': input should be greater than 0"),
        (["no_equals_sign"], "not of the form section.key=value"),
    ],
)
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", "train:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r"'train\.epochs': input should be a valid integer"):
        load_config(tmp_path / "c.yaml")


def test_step_schedule_with_warmup():
    cfg = load_config(None, ["schedule.name=step", "schedule.milestones=[2, 3]", "schedule.warmup_epochs=1"])
    f = [lr_factor(s, cfg.schedule, steps_per_epoch=4, epochs=4, base_lr=0.1) for s in range(16)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up over the first epoch
    assert f[4:8] == [1.0] * 4
    assert f[8:12] == pytest.approx([0.1] * 4)  # first step of epoch 2
    assert f[12:] == pytest.approx([0.01] * 4)


def test_cosine_schedule_end_points():
    cfg = load_config(None, ["schedule.name=cosine", "schedule.min_lr=0.01"])
    f = [lr_factor(s, cfg.schedule, steps_per_epoch=5, epochs=2, base_lr=0.1) for s in range(11)]
    assert f[0] == pytest.approx(1.0)
    assert f[5] == pytest.approx(0.1 + 0.9 * 0.5)  # half way
    assert f[10] == pytest.approx(0.1)  # floor min_lr / lr
    assert all(a >= b for a, b in itertools.pairwise(f))


def test_scheduler_drives_optimizer():
    cfg = load_config(None, ["optim.lr=0.2", "schedule.name=cosine", "schedule.warmup_epochs=0.5"])
    param = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([param], cfg.optim)
    sched = build_scheduler(opt, cfg.schedule, steps_per_epoch=4, epochs=3)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([0.1, 0.2])
    assert lrs[2] == pytest.approx(0.2) and lrs[-1] == pytest.approx(
        0.2 * 0.5 * (1 + math.cos(math.pi * 9 / 10))
    )
    adamw = build_optimizer([param], load_config(None, ["optim.name=adamw", "optim.lr=1e-3"]).optim)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["lr"] == 1e-3


def test_exponent_floats_without_a_dot_are_floats():
    """YAML 1.1 reads 1e-4 as a string; untyped sections (the LLM train section) must get a float."""
    from eakd.engine.config import apply_override, load_yaml

    assert apply_override({}, "train.learning_rate=1e-4") == {"train": {"learning_rate": 1e-4}}
    assert load_yaml("a: 5.0e-4\nb: -2E+3\nc: 12\nd: 1e5x\ne: 0.5") == {
        "a": 5e-4,
        "b": -2000.0,
        "c": 12,
        "d": "1e5x",
        "e": 0.5,
    }


def test_an_empty_override_value_is_refused_not_the_default() -> None:
    with pytest.raises(ConfigError, match=r"override 'distill.tau=' has no value; write distill.tau=null"):
        load_config(None, ["distill.tau="])
    assert load_config(None, ["distill.tau=null"]).distill.tau is None


@pytest.mark.parametrize("key", ["optim.lr", "optim.weight_decay", "distill.kd_weight", "distill.tau"])
def test_numbers_beyond_float32_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"config key '{key}': value error, must be <= 1e\+38"):
        load_config(None, [f"{key}=1e300"])
    load_config(None, [f"{key}=1e30"])
