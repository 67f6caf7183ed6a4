"""One LLM distillation run from a config: teacher, student, data, EAKDTrainer, evaluation, results.json.

A config file is YAML read by ``eakd.engine.config.load_config(path, overrides, schema=LLMRunConfig)``
(``base:`` inheritance, ``section.key=value`` overrides, ``imports``, unknown keys and wrong types are
ConfigErrors naming the dotted key)::

    model: {teacher: smollm2, student_layers: 6, warm_start: runs/llm/warm-start, warm_start_steps: 100}
    data:  {source: chatterbot, val_size: 100, test_size: 150, max_length: 128}   # or a hub id / file
    eval:  {every: 100, sampling_seeds: 5, max_new_tokens: 48}
    train: {output_dir: runs/llm/ea, max_steps: 150, divergence: fkl, weighting: ea, ...}  # EAKDConfig

A run: the student (a warm start shared by path, or teacher layers), its per-token KL to the teacher,
top-1 agreement and perplexity on validation before distillation, training with greedy validation
ROUGE-L every ``eval.every`` steps (the best weights kept), then on the test split ROUGE-L (sampled,
primary; greedy) at the best validation step and at the last, the teacher-agreement diagnostics at the
best, and the best's fit on validation again; all in output_dir/results.json.
``train.resume_from_checkpoint``: ``auto`` (the latest complete ``checkpoint-N`` in train.output_dir, else
a fresh start) or a checkpoint folder; checkpoints are written with ``save_strategy: steps`` and
``save_steps`` (a resumed run's validation starts again at the resume).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import shutil
import time
import typing
from dataclasses import field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, StrictBool, StrictStr, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError
from transformers import AutoModelForCausalLM, PreTrainedModel, PrinterCallback

from eakd.engine.config import ConfigError, NonNegInt, PosFloat, PosInt, section
from eakd.engine.preflight import check_writable
from eakd.llm.cache import TOP_K, TeacherCache
from eakd.llm.callbacks import BestValidation, StepProgress
from eakd.llm.checkpoints import resume_checkpoint
from eakd.llm.data import Pair, collate, encode_pairs, load_pairs, split_pairs
from eakd.llm.models import from_pretrained, load_teacher, make_student, num_params
from eakd.llm.progress import QUIET, ProgressHook
from eakd.llm.run_results import evaluate_on_test, print_start, save_run, validation_fit
from eakd.llm.sparse import check_settings
from eakd.llm.trainer import RENAMED, EAKDConfig, EAKDTrainer

TRAIN_KEYS = [f.name for f in dataclasses.fields(EAKDConfig) if f.init]
# the train keys a study's arms differ by (declared in TokenLossSettings and GenerationSettings): left out
# of the warm start
ARM_KEYS = tuple(f.name for f in dataclasses.fields(EAKDConfig) if f.metadata.get("arm"))


def _train_key(key: str) -> str:
    """A key of the train section must be an EAKDConfig field (error with the nearest field name, or the
    new name of a renamed key)."""
    if key in RENAMED:
        raise PydanticCustomError(
            "renamed_train_key", f"renamed: did you mean 'train.{RENAMED[key]}'? (the same setting)"
        )
    if key not in TRAIN_KEYS:
        close = difflib.get_close_matches(key, TRAIN_KEYS, n=1)
        hint = f" (did you mean 'train.{close[0]}'?)" if close else ""
        raise PydanticCustomError("unknown_train_key", f"unknown key{hint}; train takes EAKDConfig fields")
    return key


@section
class ModelSection:
    """teacher: hub id, local folder or "smollm2". teacher_cache: a file written by ``eakd llm cache`` for
    this data section; training then reads the teacher's top-k log-probs and entropies from it and never
    runs the teacher (which still seeds the student). The student: the teacher's family with
    student_layers layers (and optional smaller widths), init "layers" (evenly spaced teacher layers) or
    "random". warm_start: a folder holding the student to start from instead (shared by every arm of a
    study); when it does not exist yet and warm_start_steps > 0, that many steps of cross-entropy training
    of the student above write it first (``warm_start_student``)."""

    teacher: StrictStr = "smollm2"
    teacher_cache: StrictStr | None = None
    student_layers: PosInt = 6
    student_hidden: PosInt | None = None
    student_intermediate: PosInt | None = None
    init: Literal["layers", "random"] = "layers"
    warm_start: StrictStr | None = None
    warm_start_steps: NonNegInt = 0


@section
class DataSection:
    """source: "chatterbot", a hub id (e.g. databricks/databricks-dolly-15k) or a .json/.jsonl/.csv/.parquet
    file (``eakd.llm.data.load_pairs``), its ``split``; prompt_column (+ context_column, joined after a
    blank line when not empty) and response_column name the columns (Dolly's by default). The pairs are
    de-duplicated by normalised prompt and response, then split into val_size validation, test_size test
    and the rest training pairs (``eakd.llm.data.split_pairs``, by ``seed``); max_train caps the training
    pairs; max_length in tokens."""

    source: StrictStr = "chatterbot"
    split: StrictStr = "train"
    prompt_column: StrictStr = "instruction"
    context_column: StrictStr | None = "context"
    response_column: StrictStr = "response"
    val_size: NonNegInt = 100
    test_size: NonNegInt = 150
    max_length: PosInt = 128
    max_train: PosInt | None = None
    seed: NonNegInt = 0


@section
class EvalSection:
    """The evaluation. every: greedy validation ROUGE-L every that many optimiser steps, and at the last
    (0: the last only); the best validation step is the selected student. Test: ROUGE-L sampled at
    ``temperature`` over sampling_seeds seeds (primary) and greedy, at the selected step and, with
    test_last, at the last step too (false: the test split is decoded once); confident: the teacher's
    p_max above which a token counts as confident in the diagnostics."""

    every: NonNegInt = 100
    sampling_seeds: PosInt = 5
    temperature: PosFloat = 1.0
    max_new_tokens: PosInt = 48
    batch_size: PosInt = 16
    confident: PosFloat = 0.9
    test_last: StrictBool = True


@section
class CacheSection:
    """The teacher cache ``eakd llm cache``, the demo and the studies write for this config (a run reads
    whatever ``model.teacher_cache`` holds). sparse: "topk" (the teacher's top_k tokens, the rest spread
    evenly) or "sampled" (its top ``exact`` tokens, then top_k - exact tokens drawn from the rest by
    ``seed``: unbiased, ``eakd.llm.sparse``); top_k: tokens stored per labelled token (8 bytes each)."""

    sparse: Literal["topk", "sampled"] = "topk"
    top_k: PosInt = TOP_K
    exact: NonNegInt = 0
    seed: NonNegInt = 0


@section
class LLMRunConfig:
    """A whole LLM run. imports: modules imported first (they register plugins, e.g. weight policies).
    train: EAKDConfig / TrainingArguments keyword arguments (an unknown key is a ConfigError on loading;
    values are checked when the EAKDConfig is built, ``training_args``)."""

    imports: list[StrictStr] = field(default_factory=list)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    eval: EvalSection = field(default_factory=EvalSection)
    cache: CacheSection = field(default_factory=CacheSection)
    train: dict[Annotated[str, AfterValidator(_train_key)], Any] = field(default_factory=dict)


def check_train_types(train: dict[str, Any]) -> None:
    """Each train value must fit its EAKDConfig field's type (lax: "1e-3" is a float); ConfigError naming
    the dotted key otherwise (EAKDConfig itself would fail with e.g. "'>' not supported")."""
    hints = typing.get_type_hints(EAKDConfig)
    for key, value in train.items():
        try:
            TypeAdapter(hints[key]).validate_python(value)
        except ValidationError as err:
            msg = err.errors()[0]["msg"]
            got = f"got {type(value).__name__} ({value!r})"
            raise ConfigError(f"config key 'train.{key}': {msg[0].lower() + msg[1:]}, {got}") from None


def training_args(cfg: LLMRunConfig) -> EAKDConfig:
    """The EAKDConfig of a run: quiet CPU-friendly defaults, then the config's train section; a value of
    the wrong type is a ConfigError naming its key, one EAKDConfig refuses a ConfigError naming the
    train section."""
    check_train_types(cfg.train)
    defaults = {
        "output_dir": "runs/llm",
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 10,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-4,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 10,
        "max_steps": 150,
        "seed": cfg.data.seed,
        "disable_tqdm": True,
    }
    try:
        args = EAKDConfig(**{**defaults, **cfg.train})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config section 'train': {err}") from err
    if cfg.model.teacher_cache is not None and args.generation().generates():
        raise ConfigError(
            "model.teacher_cache holds the teacher on the dataset's responses only: train.lmbda > 0 or "
            "train.seq_kd (generated responses) need the teacher online; drop one of them"
        )
    return args


def split_rows(
    cfg: LLMRunConfig, tokenizer: Any
) -> tuple[list[dict[str, list[int]]], list[Pair], list[Pair]]:
    """(encoded training rows, validation pairs, test pairs) of a run's data section."""
    d = cfg.data
    pairs = load_pairs(d.source, d.prompt_column, d.context_column, d.response_column, d.split)
    train_pairs, val, test = split_pairs(pairs, d.val_size, d.test_size, d.seed)
    return encode_pairs(tokenizer, train_pairs[: d.max_train], d.max_length), val, test


def checked_cache(cfg: LLMRunConfig, args: EAKDConfig) -> TeacherCache | None:
    """The teacher cache at ``model.teacher_cache`` (None without), loaded once and checked against the
    loss settings of ``args`` (ValueError)."""
    if cfg.model.teacher_cache is None:
        return None
    cache = TeacherCache.load(cfg.model.teacher_cache)
    check_settings(cache.temperature, cache.tau, args.loss_settings(), cache.samples)
    return cache


def make_trainer(
    args: EAKDConfig, cache: TeacherCache | None, teacher: PreTrainedModel, tokenizer: Any,
    student: PreTrainedModel, rows: list[dict[str, list[int]]], progress: ProgressHook = QUIET,
    callbacks: tuple[Any, ...] = (),
) -> EAKDTrainer:  # fmt: skip
    """The run's EAKDTrainer: the teacher online, or the (checked) ``cache``; its steps reported to
    ``progress`` (``eakd.llm.progress``), which then replaces the printed log dicts."""
    trainer = EAKDTrainer(
        model=student,
        teacher=teacher if cache is None else None,
        teacher_cache=cache,
        args=args,
        train_dataset=rows if cache is None else cache.attach(rows),
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
        callbacks=[*callbacks, StepProgress(progress)],
    )
    if progress is not QUIET:
        trainer.remove_callback(PrinterCallback)
    return trainer


def layer_student(m: ModelSection, teacher: PreTrainedModel) -> PreTrainedModel:
    """A student of ``m``'s shape from the teacher (``make_student``, seed 0)."""
    return make_student(teacher, m.student_layers, m.student_hidden, m.student_intermediate, m.init, seed=0)


def warm_start_recipe(cfg: LLMRunConfig) -> LLMRunConfig:
    """The config that writes ``cfg``'s warm start (a new config; ``cfg`` is not changed): cross-entropy
    only (weighting none, kd_weight 0, ce_weight 1, seed 0) for ``model.warm_start_steps`` steps on the
    training rows, the rest of the train section as given but the arm's loss keys (``ARM_KEYS``), so
    that every arm of a study shares it; no warm start of its own and no teacher cache (CE needs none)."""
    m = cfg.model
    folder = Path(str(m.warm_start))
    train = {
        **{k: v for k, v in cfg.train.items() if k not in ARM_KEYS},
        "weighting": "none",
        "kd_weight": 0.0,
        "ce_weight": 1.0,
        "seed": 0,
        "max_steps": m.warm_start_steps,
        "output_dir": str(folder.with_name(folder.name + ".run")),
        "save_strategy": "no",
        "resume_from_checkpoint": None,
    }
    model = dataclasses.replace(m, warm_start=None, teacher_cache=None)
    return dataclasses.replace(cfg, model=model, train=train)


def write_warm_start(
    sft: LLMRunConfig, folder: Path, recipe: dict[str, Any], teacher: PreTrainedModel, tokenizer: Any,
    progress: ProgressHook,
) -> None:  # fmt: skip
    """Train the warm start ``sft`` (``warm_start_recipe``) and save it with its ``recipe`` in ``folder``
    (written beside it first, then renamed: a killed run leaves no half folder)."""
    student = layer_student(sft.model, teacher)
    progress.phase("warm start")
    rows = split_rows(sft, tokenizer)[0]
    args = training_args(sft)
    make_trainer(args, checked_cache(sft, args), teacher, tokenizer, student, rows, progress).train()
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)
    (tmp / "warm_start.json").write_text(json.dumps(recipe, indent=1))
    tmp.rename(folder)


def warm_start_student(
    cfg: LLMRunConfig, teacher: PreTrainedModel, tokenizer: Any, progress: ProgressHook = QUIET
) -> PreTrainedModel:
    """The run's initial student: ``layer_student`` from the teacher, or the warm start at
    ``model.warm_start``, written first when missing (``warm_start_recipe``; the run's teacher cache, if
    any, only speeds that up). Its recipe is saved beside it (warm_start.json); a folder of another
    recipe is a ValueError."""
    m = cfg.model
    if m.warm_start is None:
        if m.warm_start_steps:
            raise ConfigError("model.warm_start_steps needs model.warm_start: the folder to save it in")
        return layer_student(m, teacher)
    folder = Path(m.warm_start)
    sft = warm_start_recipe(cfg)
    kept = {k: v for k, v in dataclasses.asdict(sft).items() if k != "cache"}  # CE reads no teacher cache
    recipe = json.loads(json.dumps({**kept, "eval": None}, default=str))
    if not (folder / "config.json").is_file():
        if not m.warm_start_steps:
            raise FileNotFoundError(
                f"model.warm_start {folder} holds no model; set model.warm_start_steps > 0"
            )
        cached = dataclasses.replace(sft, model=dataclasses.replace(sft.model, teacher_cache=m.teacher_cache))
        write_warm_start(cached, folder, recipe, teacher, tokenizer, progress)
    saved = folder / "warm_start.json"
    if saved.is_file() and json.loads(saved.read_text()) != recipe:
        raise ValueError(
            f"model.warm_start {folder} was made by another recipe ({saved}); delete it or move it"
        )
    return from_pretrained(AutoModelForCausalLM, str(folder), dtype=torch.float32).train()


def run(cfg: LLMRunConfig, eval_teacher: bool = False, progress: ProgressHook = QUIET) -> dict[str, Any]:
    """Train the student by ``cfg`` (resuming by ``train.resume_from_checkpoint``) and evaluate it (see the
    module docstring); writes output_dir/results.json, the selected student in output_dir/student, and
    returns the results. A teacher cache that does not match the config's rows, temperature or tau is a
    ValueError before training. results["seconds"]: wall time of its parts (start: models, warm start, KL
    at start; train, of which validation; test; total). Each phase and its work is reported to
    ``progress`` (``eakd.llm.progress``)."""
    begin = time.perf_counter()
    args = training_args(cfg)
    name = "/".join(Path(args.output_dir).parts[-2:])
    check_writable(Path(args.output_dir), "train.output_dir")  # before the models load
    resume = resume_checkpoint(args)
    cache = checked_cache(cfg, args)  # a mismatch fails before the models load
    teacher, tokenizer = load_teacher(cfg.model.teacher)
    student = warm_start_student(cfg, teacher, tokenizer, progress).to(args.device)
    teacher.to(args.device)
    rows, val, test = split_rows(cfg, tokenizer)
    e = cfg.eval
    progress.phase(f"{name}: KL at start")
    start_fit = validation_fit(cfg, student, teacher, tokenizer, val, progress)
    print_start(name, start_fit["kl"])
    validation = BestValidation(tokenizer, val, e.every, e.max_new_tokens, e.batch_size, progress)
    trainer = make_trainer(args, cache, teacher, tokenizer, student, rows, progress, (validation,))
    progress.phase(f"{name}: training")
    start = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=resume)
    train_s = time.perf_counter() - start
    progress.phase(f"{name}: test evaluation")
    tested = evaluate_on_test(
        cfg, student, teacher, tokenizer, val, test, validation, trainer.state.global_step, eval_teacher,
        progress,
    )  # fmt: skip
    end = time.perf_counter()
    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "student_params": num_params(student),
        "teacher_params": num_params(teacher),
        "train_rows": len(rows),
        "split_sizes": {"train": len(rows), "validation": len(val), "test": len(test)},
        "kl_at_start": start_fit["kl"],
        "validation_start": start_fit,
        "train_seconds": train_s,
        "seconds": {
            "start": start - begin,
            "train": train_s,
            "validation": validation.seconds,
            "test": end - start - train_s,
            "total": end - begin,
        },
        "train_loss": train_out.training_loss,
        "log_history": trainer.state.log_history,
        "validation": {"history": validation.history, "best": validation.best},
        **tested,
    }
    save_run(result, trainer, tokenizer, Path(args.output_dir))
    return result
