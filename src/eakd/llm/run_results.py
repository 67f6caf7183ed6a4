"""The results of one LLM run (``eakd.llm.run.run``): the student's fit to the teacher on validation (before
and after training), the test-split evaluation at the best validation step and at the last, the run's
printed start line, and results.json with the selected student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel

from eakd.llm.callbacks import BestValidation
from eakd.llm.data import Pair
from eakd.llm.evaluate import evaluate, perplexity, teacher_agreement
from eakd.llm.progress import ProgressHook
from eakd.llm.trainer import EAKDTrainer

if TYPE_CHECKING:
    from eakd.llm.run import LLMRunConfig


def validation_fit(
    cfg: LLMRunConfig, student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any, val: list[Pair],
    progress: ProgressHook,
) -> dict[str, float]:  # fmt: skip
    """How close ``student`` is to the teacher on the validation responses, teacher-forced: {"kl": the mean
    per-token KL(teacher || student) in nats, "top1": the top-1 agreement, "perplexity": the student's on
    the reference response tokens, "tokens": how many}."""
    d, e = cfg.data, cfg.eval
    fit = teacher_agreement(student, teacher, tokenizer, val, d.max_length, e.batch_size, progress=progress)
    ppl = perplexity(student, tokenizer, val, d.max_length, e.batch_size, progress)
    return {**{k: fit["all"][k] for k in ("kl", "top1", "tokens")}, "perplexity": ppl}


def evaluate_on_test(
    cfg: LLMRunConfig, student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any,
    val: list[Pair], test: list[Pair], validation: BestValidation, last_step: int, eval_teacher: bool,
    progress: ProgressHook,
) -> dict[str, Any]:  # fmt: skip
    """The results after training: on the test split "student" at the best validation step (its weights
    are loaded into ``student``), "student_last" at ``last_step`` (only with ``eval.test_last``),
    "diagnostics" (teacher agreement at the best), and with ``eval_teacher`` the teacher's own,
    "teacher"; "validation_end": ``validation_fit`` of the student at the best step."""
    e = cfg.eval
    gen = {"max_new_tokens": e.max_new_tokens, "max_length": cfg.data.max_length,
           "batch_size": e.batch_size, "sampling_seeds": e.sampling_seeds, "temperature": e.temperature,
           "progress": progress}  # fmt: skip
    moved = validation.best["step"] != last_step
    last = evaluate(student, tokenizer, test, **gen) if e.test_last or not moved else None
    if moved:
        student.load_state_dict(validation.best_state)
    best = evaluate(student, tokenizer, test, **gen) if moved else last
    out = {
        "student": best,
        **({"student_last": last} if e.test_last else {}),
        "diagnostics": teacher_agreement(
            student, teacher, tokenizer, test, cfg.data.max_length, e.batch_size, e.confident, progress
        ),
        "validation_end": validation_fit(cfg, student, teacher, tokenizer, val, progress),
    }
    if eval_teacher:
        out["teacher"] = evaluate(teacher, tokenizer, test, **gen)
    return out


def print_start(name: str, kl_start: float) -> None:
    """The run's one printed line before training: the student's KL to the teacher on validation."""
    print(f"{name}: per-token KL(teacher || student) on validation at start: {kl_start:.3f} nats", flush=True)


def save_run(result: dict[str, Any], trainer: EAKDTrainer, tokenizer: Any, out_dir: Path) -> None:
    """results.json and the selected student (with its tokenizer) in out_dir/student."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=str))
    trainer.save_model(str(out_dir / "student"))
    tokenizer.save_pretrained(str(out_dir / "student"))
