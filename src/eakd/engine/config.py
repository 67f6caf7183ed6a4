"""Typed experiment configuration: dataclasses read from YAML, with base-file inheritance and overrides.

A config file is a YAML mapping of the sections below. ``base: other.yaml`` (or ``_base_``, or a list of
files) names files, relative to this one, that are merged first (mappings merge key by key, anything else
is replaced). Command-line overrides ``section.key=value`` are applied last, their values read as YAML
scalars (``optim.lr=0.01``, ``schedule.milestones=[30,60]``, ``model.teacher=null``). Unknown keys and
values of the wrong type are errors naming the full dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from eakd.registry import import_plugins

S = typing.TypeVar("S")
BASE_KEYS = ("base", "_base_")


class ConfigError(ValueError):
    """A config file or override that cannot be read: names the dotted key and what was wrong."""


@dataclass
class ExperimentConfig:
    """name: run folder name; the run lives in ``output_dir/name``. seed: seeds python, numpy, torch."""

    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"


@dataclass
class DataConfig:
    """Which data set, where it is, and how it is fed (the task's builder interprets ``name``).

    root: folder holding the data (None: the data set's default). train_subset / eval_subset: use only
    the first n samples (quick runs). two_views: weak + strong augmented views (MLKD).
    options: further keyword arguments for the data set builder.
    """

    name: str = "fashion_mnist"
    root: str | None = None
    download: bool = False
    augment: bool = True
    two_views: bool = False
    train_subset: int | None = None
    eval_subset: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Student and teacher by registry name; teacher None trains the student alone.

    teacher_checkpoint: weights of the (pretrained) teacher. student_checkpoint: optional initial weights.
    num_classes: None takes it from the data set. student_options / teacher_options: builder kwargs.
    """

    student: str = "fmnist_tiny"
    teacher: str | None = "fmnist_cnn"
    teacher_checkpoint: str | None = None
    student_checkpoint: str | None = None
    num_classes: int | None = None
    student_options: dict[str, Any] = field(default_factory=dict)
    teacher_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillConfig:
    """The distillation loss (``eakd.DistillLoss``): method and weight policy by name plus their settings.

    method: a registered loss ("kd", "dkd", ...) or "none" (student alone, cross-entropy only).
    weighting: "ea", "er", "base", "interact", "inverse", "uniform" or "none". tau: entropy temperature
    (None: the policy's default). h_ub: entropy upper bound (None: ln K). hparams: the loss's own settings
    (temperature, alpha, beta, ...).
    """

    method: str = "kd"
    weighting: str = "ea"
    tau: float | None = None
    h_ub: float | None = None
    entropy_on: Literal["raw", "standardized"] = "raw"
    standardize_logits: bool = False
    kd_weight: float = 1.0
    ce_weight: float = 1.0
    warmup_epochs: float = 0.0
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser: SGD (momentum, nesterov) or AdamW (betas); lr is the peak learning rate."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, evaluated per optimiser step (see ``eakd.engine.optim.lr_factor``).

    step: lr * gamma^(number of milestones passed), milestones in epochs. cosine: from lr down to min_lr
    over the epochs after warm-up. constant: lr. warmup_epochs: linear warm-up from 0 (may be fractional).
    """

    name: Literal["step", "cosine", "constant"] = "step"
    milestones: list[float] = field(default_factory=lambda: [150.0, 180.0, 210.0])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    """The loop. batch_size is global (all processes together) per micro-step; an optimiser step sees
    batch_size * grad_accum samples. *_every are in epochs (ckpt, eval) or optimiser steps (log, diag);
    0 switches a feature off. resume: "none", "auto" (latest checkpoint in the run dir) or a file path.
    sync_bn: batch norm statistics over all processes (SyncBatchNorm, GPUs) when there are several.
    max_grad_norm: clip the global gradient norm to this before each optimiser step (None: no clipping).
    """

    epochs: int = 240
    batch_size: int = 64
    eval_batch_size: int | None = None
    grad_accum: int = 1
    max_grad_norm: float | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_every: int = 50
    diag_every: int = 50
    diag_samples: int = 256
    eval_every: int = 1
    ckpt_every: int = 10
    keep_checkpoints: int = 2
    resume: str = "none"
    deterministic: bool = False
    sync_bn: bool = False
    num_workers: int = 2
    cpu: bool = False


@dataclass
class Config:
    """A whole experiment. task: a registered task name ("classification", "detection", ...) or
    ``"package.module:function"`` building one (see ``eakd.engine.task``). imports: modules imported before
    anything is built, where users register their own losses, policies, tasks, models and data sets."""

    imports: list[str] = field(default_factory=list)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    task: str = "classification"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        """``experiment.output_dir / experiment.name``."""
        return Path(self.experiment.output_dir) / self.experiment.name


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; returns it (ints widened to float, sections built)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping (section), got {type(value).__name__}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"config key {key!r} must not be null (expected {_type_name(tp)})")
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key {key!r} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r} must be a list, got {type(value).__name__} ({value!r})")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {type(value).__name__} ({value!r})")
        return dict(value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {type(value).__name__} ({value!r})")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {(prefix + '.' if prefix else '') + close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{hint}; known keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, any other value in ``update`` replaces the base's."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (``1e-4``) as floats, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text (safe), with ``1e-4``-style numbers as floats."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a config file with its base files merged in (bases first, in order)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config inheritance loops back to {path}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = load_yaml(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    bases: Any = [data.pop(k) for k in BASE_KEYS if k in data]
    merged: dict[str, Any] = {}
    for entry in bases:
        for name in [entry] if isinstance(entry, str) else entry:
            merged = merge(merged, read_yaml(path.parent / name, (*_seen, path)))
    return merge(merged, data)


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """Set ``a.b.c=value`` (value read as YAML) in a copy of the raw mapping ``data``."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form section.key=value")
    parts = key.strip().split(".")
    value = load_yaml(text) if text.strip() else None
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return merge(data, nested)


def from_dict(data: dict[str, Any], schema: type[S] = Config) -> S:  # type: ignore[assignment]
    """Validate a raw mapping into ``schema`` (unknown keys and wrong types raise ConfigError)."""
    return _build(schema, data, "")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    schema: type[S] = Config,  # type: ignore[assignment]
) -> S:
    """Read ``path`` (with its bases; None: all defaults), apply dotted ``key=value`` overrides and
    validate into ``schema`` (a dataclass: ``Config`` for ``eakd train``, ``LLMRunConfig`` for the LLM
    runner). The modules a config lists under ``imports`` are imported first (they register plugins)."""
    data = read_yaml(path) if path is not None else {}
    for override in overrides:
        data = apply_override(data, override)
    imports = data.get("imports") or []
    if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
        raise ConfigError(f"config key 'imports' must be a list of module names, got {imports!r}")
    try:
        import_plugins(imports)
    except ValueError as err:
        raise ConfigError(f"config key 'imports': {err}") from err
    return from_dict(data, schema)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML-safe data (the form dumped to ``config.yaml`` in a run dir)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML; ``load_config(path)`` reads back an equal Config."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
