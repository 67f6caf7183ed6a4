"""Typed experiment configuration: YAML files with base-file inheritance and overrides, validated by pydantic.

A config file is a YAML mapping of the sections below. ``base: other.yaml`` (or ``_base_``, or a list of
files) names files, relative to this one, that are merged first (mappings merge key by key, anything else
is replaced). Command-line overrides ``section.key=value`` are applied last, their values read as YAML
scalars (``optim.lr=0.01``, ``schedule.milestones=[30,60]``, ``model.teacher=null``). The sections are
pydantic dataclasses (``section``): unknown keys (with a did-you-mean), values of the wrong type and values
out of range are ``ConfigError``s naming the full dotted key, when the config is built, not at the first
step. Any runner can validate its own schema the same way: ``load_config(path, overrides, schema=...)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from dataclasses import field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic.dataclasses import dataclass

from eakd.args import one_line
from eakd.engine.files import atomic_write_text
from eakd.registry import import_plugins

S = typing.TypeVar("S")
BASE_KEYS = ("base", "_base_")
RANDOM_TEACHER = "random"  # model.teacher_checkpoint: the config asks for a randomly initialised teacher

section = dataclass(config=ConfigDict(extra="forbid"))
"""Decorator making a config section: a dataclass validated on construction, unknown keys refused."""
PosInt = Annotated[StrictInt, Field(gt=0)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
FLOAT_MAX = 1e38  # numbers of a config end up in float32 tensors (largest 3.4e38): larger ones overflow


def _float32(value: float) -> float:
    if value > FLOAT_MAX:
        raise ValueError(f"must be <= {FLOAT_MAX:g} (larger numbers overflow float32)")
    return value


PosFloat = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False), AfterValidator(_float32)]
NonNegFloat = Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False), AfterValidator(_float32)]


class ConfigError(ValueError):
    """A config file or override that cannot be read: names the dotted key and what was wrong."""


@section
class ExperimentConfig:
    """name: run folder name; the run lives in ``output_dir/name``. seed: seeds python, numpy, torch.

    name is a relative path inside output_dir: absolute names and ``..`` parts are refused, so no run
    writes outside output_dir.
    """

    name: StrictStr = "run"
    seed: NonNegInt = 0
    output_dir: StrictStr = "runs"

    @field_validator("name")
    @classmethod
    def _inside_output_dir(cls, name: str) -> str:
        for flavour in (PurePosixPath, PureWindowsPath):
            path = flavour(name)
            if path.is_absolute() or path.anchor or ".." in path.parts:
                raise ValueError("must be a folder name inside experiment.output_dir (no '..', not absolute)")
        return name


@section
class DataConfig:
    """Which data set, where it is, and how it is fed (the task's builder interprets ``name``).

    root: folder holding the data (None: the data set's default). train_subset / eval_subset: use only
    the first n samples (quick runs). two_views: weak + strong augmented views (MLKD).
    options: further keyword arguments for the data set builder.
    """

    name: StrictStr = "fashion_mnist"
    root: StrictStr | None = None
    download: StrictBool = False
    augment: StrictBool = True
    two_views: StrictBool = False
    train_subset: PosInt | None = None
    eval_subset: PosInt | None = None
    options: dict[str, Any] = field(default_factory=dict)


@section
class ModelConfig:
    """Student and teacher by registry name; teacher None trains the student alone.

    teacher_checkpoint: the trained teacher's weights file, required when the run distils (unless
    ``teacher_options.pretrained`` loads the library's weights); ``"random"`` keeps the randomly
    initialised teacher, for tests and plumbing examples only. teacher_source: where to get that file (a
    URL or a command), named when it is missing. student_checkpoint: optional initial weights.
    num_classes: None takes it from the data set. student_options / teacher_options: builder kwargs.
    """

    student: StrictStr = "fmnist_tiny"
    teacher: StrictStr | None = "fmnist_cnn"
    teacher_checkpoint: StrictStr | None = None
    teacher_source: StrictStr | None = None
    student_checkpoint: StrictStr | None = None
    num_classes: PosInt | None = None
    student_options: dict[str, Any] = field(default_factory=dict)
    teacher_options: dict[str, Any] = field(default_factory=dict)


@section
class DistillConfig:
    """The distillation loss (``eakd.DistillLoss``): method and weight policy by name plus their settings.

    method: a registered loss ("kd", "dkd", ...) or "none" (student alone, cross-entropy only).
    weighting: "ea", "er", "base", "interact", "inverse", "uniform" or "none". tau: entropy temperature
    (None: the policy's default). h_ub: entropy upper bound (None: ln K). weight_norm: "none" (the paper's
    rule) or "mean" (weights divided by their batch mean, ``eakd.distill.normalise_weights``). hparams: the
    loss's own settings (temperature, alpha, beta, ...). fused: the compiled single-pass loss and entropies
    (kd / dkd, ``eakd.losses.fused``): true, false, or "auto" (where faster, ``DistillLoss``). kd_weight,
    ce_weight: the outer weights of the distillation terms and of the hard-label cross-entropy. Every
    default is ``DistillLoss``'s (and the LLM side's, ``TokenLossSettings``): one rule for all entry
    points, so ce_weight is 0 unless a config sets it (the packaged ones do); method "none" needs
    ce_weight > 0.
    """

    method: StrictStr = "kd"
    weighting: StrictStr = "ea"
    tau: PosFloat | None = None
    h_ub: PosFloat | None = None
    entropy_on: Literal["raw", "standardized"] = "raw"
    standardize_logits: StrictBool = False
    kd_weight: NonNegFloat = 1.0
    ce_weight: NonNegFloat = 0.0
    warmup_epochs: NonNegFloat = 0.0
    weight_norm: Literal["none", "mean"] = "none"
    fused: StrictBool | Literal["auto"] = "auto"
    hparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method == "none" and self.ce_weight == 0:
            raise ValueError("method none (the student alone) needs ce_weight > 0, or nothing is trained")


@section
class OptimConfig:
    """Optimiser: SGD (momentum, nesterov) or AdamW (betas); lr is the peak learning rate."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: NonNegFloat = 0.05
    momentum: NonNegFloat = 0.9
    weight_decay: NonNegFloat = 5e-4
    nesterov: StrictBool = False
    betas: list[NonNegFloat] = field(default_factory=lambda: [0.9, 0.999])


@section
class ScheduleConfig:
    """Learning-rate schedule, evaluated per optimiser step (see ``eakd.engine.optim.lr_factor``).

    step: lr * gamma^(number of milestones passed), milestones in epochs. cosine: from lr down to min_lr
    over the epochs after warm-up. constant: lr. warmup_epochs: linear warm-up from 0 (may be fractional).
    """

    name: Literal["step", "cosine", "constant"] = "step"
    milestones: list[NonNegFloat] = field(default_factory=lambda: [150.0, 180.0, 210.0])
    gamma: PosFloat = 0.1
    warmup_epochs: NonNegFloat = 0.0
    min_lr: NonNegFloat = 0.0


@section
class TrainConfig:
    """The loop. batch_size is global (all processes together) per micro-step; an optimiser step sees
    batch_size * grad_accum samples. *_every are in epochs (ckpt, eval) or optimiser steps (log, diag);
    0 switches a feature off. resume: "none", "auto" (latest checkpoint in the run dir) or a file path.
    sync_bn: batch norm statistics over all processes (SyncBatchNorm, GPUs) when there are several.
    max_grad_norm: clip the global gradient norm to this before each optimiser step (None: no clipping).
    """

    epochs: PosInt = 240
    batch_size: PosInt = 64
    eval_batch_size: PosInt | None = None
    grad_accum: PosInt = 1
    max_grad_norm: PosFloat | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_every: NonNegInt = 50
    diag_every: NonNegInt = 50
    diag_samples: NonNegInt = 256
    eval_every: NonNegInt = 1
    ckpt_every: NonNegInt = 10
    ckpt_every_steps: NonNegInt = 0
    keep_checkpoints: NonNegInt = 2
    resume: StrictStr = "none"
    overwrite: StrictBool = False
    deterministic: StrictBool = False
    sync_bn: StrictBool = False
    num_workers: NonNegInt = 2
    cpu: StrictBool = False


@section
class Config:
    """A whole experiment. task: a registered task name ("classification", "detection", ...) or
    ``"package.module:function"`` building one (see ``eakd.engine.task``). imports: modules imported before
    anything is built, where users register their own losses, policies, tasks, models and data sets."""

    imports: list[StrictStr] = field(default_factory=list)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    task: StrictStr = "classification"
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

    @property
    def teacher_file(self) -> str | None:
        """The teacher's weights file to load: ``model.teacher_checkpoint``, None when unset or "random"."""
        path = self.model.teacher_checkpoint
        return None if path in (None, RANDOM_TEACHER) else path


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


def load_yaml(text: str, where: str = "YAML") -> Any:
    """Parse YAML text (safe: python tags are refused), with ``1e-4``-style numbers as floats; a syntax
    error or a tag is a ConfigError naming ``where`` (a file or an override)."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML in {where}: {one_line(err)}") from None


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a config file with its base files merged in (bases first, in order)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config inheritance loops back to {path}")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text (YAML) file") from None
    data = load_yaml(text, f"config file {path}")
    if data is None:
        raise ConfigError(
            f"config file {path} is empty; start from a packaged config (`eakd configs copy demo/kd my.yaml`)"
        )
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
    if not text.strip():
        raise ConfigError(f"override {override!r} has no value; write {key.strip()}=null to unset it")
    value = load_yaml(text, f"override {override!r}")
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return merge(data, nested)


@functools.cache
def _adapter(schema: type) -> TypeAdapter[Any]:
    if not hasattr(schema, "__pydantic_fields__"):
        raise TypeError(f"config schema {schema.__name__} must be built with eakd.engine.config.section")
    return TypeAdapter(schema)


def _known_keys(schema: type, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section at ``loc`` (a path of field names) in ``schema``."""
    cls: Any = schema
    for part in loc:
        tp = typing.get_type_hints(cls)[part]
        cls = next((t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t)), None)
        if cls is None:
            return []
    return [f.name for f in dataclasses.fields(cls)]


def _message(schema: type, err: ValidationError) -> str:
    """One line for the first error, naming the dotted key (and the nearest known key when unknown)."""
    first = err.errors()[0]
    loc = tuple(p for p in first["loc"] if p != "[key]")  # a mapping's key, not its value, was refused
    key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    if len(loc) < len(first["loc"]):
        return f"config key {key!r}: {first['msg']}"
    if first["type"] == "unexpected_keyword_argument":
        names = _known_keys(schema, loc[:-1])
        prefix = ".".join(str(p) for p in loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f" (did you mean {(prefix + '.' if prefix else '') + close[0]!r}?)" if close else ""
        return f"unknown config key {key!r}{hint}; known keys here: {', '.join(names)}"
    value = first.get("input")
    msg = first["msg"][0].lower() + first["msg"][1:]
    return f"config key {key!r}: {msg}, got {type(value).__name__} ({value!r})"


def from_dict(data: dict[str, Any], schema: type[S] = Config) -> S:  # type: ignore[assignment]
    """Validate a raw mapping into ``schema`` (unknown keys, wrong types, bad values raise ConfigError)."""
    try:
        return _adapter(schema).validate_python(data)
    except ValidationError as err:
        raise ConfigError(_message(schema, err)) from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    schema: type[S] = Config,  # type: ignore[assignment]
) -> S:
    """Read ``path`` (with its bases; None: all defaults), apply dotted ``key=value`` overrides and
    validate into ``schema`` (a dataclass: ``Config`` for ``eakd train``, ``LLMRunConfig`` for the LLM
    runner). The modules a config lists under ``imports`` are imported first (they register plugins).
    ``path`` may name a packaged config instead (``eakd.engine.catalog.find_config``)."""
    from eakd.engine.catalog import find_config  # the catalog reads configs with this module

    data = read_yaml(find_config(path)) if path is not None else {}
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
    """Write the resolved config as YAML, atomically; ``load_config(path)`` reads back an equal Config."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
