"""One LLM distillation run from a config: teacher, student, data, EAKDTrainer, evaluation, results.json.

A config file is YAML with four sections (all optional; ``base:`` inheritance and ``section.key=value``
overrides as in ``eakd.engine.config``)::

    model: {teacher: smollm2, student_layers: 2, init: layers}
    data:  {source: chatterbot, eval_size: 100, max_length: 128}
    eval:  {max_new_tokens: 48}
    train: {output_dir: runs/llm/ea, max_steps: 150, divergence: fkl, weighting: ea, ...}  # EAKDConfig
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from eakd.engine.config import apply_override, read_yaml
from eakd.llm.cache import TeacherCache, build_cache, fingerprint
from eakd.llm.data import Pair, collate, encode_pairs, load_pairs, split_pairs
from eakd.llm.evaluate import evaluate
from eakd.llm.models import load_teacher, load_tokenizer, make_student, num_params
from eakd.llm.trainer import EAKDConfig, EAKDTrainer


@dataclass
class ModelSection:
    """teacher: hub id, local folder or "smollm2". teacher_cache: a file written by ``eakd llm cache`` for
    this data section; training then reads the teacher's top-k log-probs and entropies from it and never
    runs the teacher (which still seeds the student). The student: the teacher's family with
    student_layers layers (and optional smaller widths), init "layers" (evenly spaced teacher layers) or
    "random"."""

    teacher: str = "smollm2"
    teacher_cache: str | None = None
    student_layers: int = 2
    student_hidden: int | None = None
    student_intermediate: int | None = None
    init: str = "layers"


@dataclass
class DataSection:
    """source: "chatterbot" or a JSONL path; eval_size held-out pairs; max_train caps the training pairs."""

    source: str = "chatterbot"
    eval_size: int = 100
    max_length: int = 128
    max_train: int | None = None
    seed: int = 0


@dataclass
class EvalSection:
    """Generation settings of the ROUGE-L evaluation (greedy by default)."""

    max_new_tokens: int = 48
    batch_size: int = 16
    do_sample: bool = False


@dataclass
class LLMRunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    eval: EvalSection = field(default_factory=EvalSection)
    train: dict[str, Any] = field(default_factory=dict)


def _section(cls: type, data: dict[str, Any] | None, name: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data or {}) - known
    if unknown:
        raise ValueError(f"unknown key(s) in section {name!r}: {sorted(unknown)}; known: {sorted(known)}")
    return cls(**(data or {}))


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> LLMRunConfig:  # type: ignore[assignment]
    """Read a run config (None: defaults) and apply ``section.key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    for o in overrides:
        data = apply_override(data, o)
    unknown = set(data) - {"model", "data", "eval", "train"}
    if unknown:
        raise ValueError(f"unknown section(s) {sorted(unknown)}; known: model, data, eval, train")
    return LLMRunConfig(
        model=_section(ModelSection, data.get("model"), "model"),
        data=_section(DataSection, data.get("data"), "data"),
        eval=_section(EvalSection, data.get("eval"), "eval"),
        train=dict(data.get("train") or {}),
    )


def training_args(cfg: LLMRunConfig) -> EAKDConfig:
    """The EAKDConfig of a run: quiet CPU-friendly defaults, then the config's train section."""
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
    return EAKDConfig(**{**defaults, **cfg.train})


def split_rows(cfg: LLMRunConfig, tokenizer: Any) -> tuple[list[dict[str, list[int]]], list[Pair]]:
    """(encoded training rows, held-out pairs) of a run's data section."""
    train_pairs, held_out = split_pairs(load_pairs(cfg.data.source), cfg.data.eval_size, cfg.data.seed)
    return encode_pairs(tokenizer, train_pairs[: cfg.data.max_train], cfg.data.max_length), held_out


def write_cache(
    cfg: LLMRunConfig, path: str | Path, top_k: int = 64, batch_size: int = 8, progress: bool = True
) -> TeacherCache:
    """Run the config's teacher once over its training rows and save the top-k cache to ``path``, at the
    train section's temperature and tau (so runs of that config can read it)."""
    args = training_args(cfg)
    if args.tau is None:
        raise ValueError("set train.tau explicitly to write a teacher cache (its entropies are at tau)")
    teacher, tokenizer = load_teacher(cfg.model.teacher)
    rows, _ = split_rows(cfg, tokenizer)
    cache = build_cache(
        teacher,
        rows,
        tokenizer.pad_token_id,
        top_k=top_k,
        temperature=args.temperature,
        tau=args.tau,
        batch_size=batch_size,
        vocab_size=args.vocab_size,
        teacher_name=cfg.model.teacher,
        progress=progress,
    )
    cache.save(path)
    return cache


def reuse_or_write_cache(
    cfg: LLMRunConfig, path: str | Path, top_k: int = 64, batch_size: int = 8
) -> tuple[TeacherCache, bool]:
    """(the cache at ``path`` if it was written for this config's rows, teacher, temperature, tau and top_k,
    else a fresh one written there; whether it was reused)."""
    args = training_args(cfg)
    try:
        old = TeacherCache.load(path) if Path(path).exists() else None
    except ValueError:  # a cache of an older format is written again
        old = None
    if old is not None:
        rows, _ = split_rows(cfg, load_tokenizer(cfg.model.teacher))
        same = (old.teacher, old.top_k, old.temperature, old.tau, old.rows_fingerprint) == (
            cfg.model.teacher,
            top_k,
            args.temperature,
            args.tau,
            fingerprint(rows),
        )
        if same:
            return old, True
    return write_cache(cfg, path, top_k, batch_size), False


def run(cfg: LLMRunConfig, eval_teacher: bool = False) -> dict[str, Any]:
    """Train the student by ``cfg`` and evaluate it on the held-out pairs; writes and returns results."""
    args = training_args(cfg)
    teacher, tokenizer = load_teacher(cfg.model.teacher)
    student = make_student(
        teacher,
        cfg.model.student_layers,
        cfg.model.student_hidden,
        cfg.model.student_intermediate,
        cfg.model.init,
        seed=args.seed,
    )
    rows, held_out = split_rows(cfg, tokenizer)
    cache = None if cfg.model.teacher_cache is None else TeacherCache.load(cfg.model.teacher_cache)
    trainer = EAKDTrainer(
        model=student,
        teacher=teacher if cache is None else None,
        teacher_cache=cache,
        args=args,
        train_dataset=rows if cache is None else cache.attach(rows),
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
    )
    start = time.perf_counter()
    train_out = trainer.train()
    train_s = time.perf_counter() - start
    gen = {
        "max_new_tokens": cfg.eval.max_new_tokens,
        "batch_size": cfg.eval.batch_size,
        "do_sample": cfg.eval.do_sample,
        "max_length": cfg.data.max_length,
    }
    result: dict[str, Any] = {
        "config": {**dataclasses.asdict(cfg), "train": {**cfg.train}},
        "student_params": num_params(student),
        "teacher_params": num_params(teacher),
        "train_rows": len(rows),
        "train_seconds": train_s,
        "train_loss": train_out.training_loss,
        "log_history": trainer.state.log_history,
        "student": evaluate(student, tokenizer, held_out, **gen),
    }
    if eval_teacher:
        result["teacher"] = evaluate(teacher, tokenizer, held_out, **gen)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=str))
    trainer.save_model(str(out_dir / "student"))
    tokenizer.save_pretrained(str(out_dir / "student"))
    return result
