"""The LLM study behind ``eakd llm demo`` and benchmarks/llm_study.py: SFT, KD (forward KL), reverse KL and
EA-KD, same teacher, student, data and budget, compared by ROUGE-L and perplexity on held-out prompts,
through the shared study runner (``eakd.study``: seed-major, saved after every run, paired intervals)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from eakd.llm.run import LLMRunConfig, run
from eakd.study import run_study, study_table

# train-section overrides per method; everything else is shared
METHODS: dict[str, dict[str, Any]] = {
    "sft": {"weighting": "none", "kd_weight": 0.0, "ce_weight": 1.0},
    "kd": {"divergence": "fkl", "weighting": "none"},
    "rkl": {"divergence": "rkl", "weighting": "none"},
    "ea-kd": {"divergence": "fkl", "weighting": "ea"},
}
METRICS = {"rougeL": "ROUGE-L", "perplexity": "perplexity", "train_s": "train s/run"}


def method_config(base: LLMRunConfig, method: str, seed: int, out_dir: str | Path) -> LLMRunConfig:
    """``base`` with ``method``'s train settings, the student seed and its output folder
    ``out_dir/<method>/seed<k>``; the held-out prompts stay those of data seed 0 for every run."""
    cfg = copy.deepcopy(base)
    cfg.data.seed = 0
    cfg.train = {
        **cfg.train,
        **METHODS[method],
        "seed": seed,
        "output_dir": str(Path(out_dir) / method / f"seed{seed}"),
    }
    return cfg


def run_metrics(res: dict[str, Any]) -> dict[str, float]:
    """A run's study metrics: the student's ROUGE-L and perplexity on the held-out prompts, train seconds."""
    student = res["student"]
    return {"rougeL": student["rougeL"], "perplexity": student["perplexity"], "train_s": res["train_seconds"]}


def llm_study(
    base: LLMRunConfig, methods: list[str], seeds: list[int], out_dir: str | Path, eval_teacher: bool = False
) -> dict[str, Any]:
    """Every method x seed (``eakd.study.run_study``); with ``eval_teacher`` the teacher's own ROUGE-L and
    perplexity come from the first run (its generation is the slowest part on a CPU) under "teacher"."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    teacher: dict[str, Any] = {}

    def train_one(method: str, seed: int) -> dict[str, float]:
        res = run(method_config(base, method, seed, out_dir), eval_teacher=eval_teacher and not teacher)
        teacher.update(res.get("teacher", {}))
        return run_metrics(res)

    protocol = {"base": dataclasses.asdict(base), "methods": methods}
    result = run_study(train_one, methods, seeds, Path(out_dir), protocol)
    if teacher:
        result["teacher"] = {k: teacher[k] for k in ("rougeL", "perplexity")}
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: the teacher (if evaluated), then ``eakd.study.study_table`` against KD."""
    lines = []
    if "teacher" in result:
        t = result["teacher"]
        lines += [f"teacher: ROUGE-L {t['rougeL']:.2f}, perplexity {t['perplexity']:.2f}", ""]
    reference = "kd" if "kd" in result["arms"] else None
    return "\n".join([*lines, study_table(result, METRICS, reference, compare=["rougeL", "perplexity"])])
