"""The LLM study behind ``eakd demo llm`` and benchmarks/llm_study.py: SFT, KD (forward KL), reverse KL and
EA-KD, same teacher, student, data and budget, compared by ROUGE-L and perplexity on held-out prompts."""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

from eakd.llm.run import LLMRunConfig, run
from eakd.stats import paired_interval

# train-section overrides per method; everything else is shared
METHODS: dict[str, dict[str, Any]] = {
    "sft": {"weighting": "none", "kd_weight": 0.0, "ce_weight": 1.0},
    "kd": {"divergence": "fkl", "weighting": "none"},
    "rkl": {"divergence": "rkl", "weighting": "none"},
    "ea-kd": {"divergence": "fkl", "weighting": "ea"},
}


def run_study(
    base: LLMRunConfig, methods: list[str], seeds: list[int], out_dir: str | Path, eval_teacher: bool = True
) -> list[dict[str, Any]]:
    """One run per (method, seed) under ``out_dir/<method>/seed<k>``; rows of the summary table (with a
    "teacher" row first when ``eval_teacher``: its generation is the slowest part on a CPU)."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    rows = []
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    teacher_done = not eval_teacher
    for seed in seeds:  # seed-major: a study stopped early still compares every method on its first seeds
        for method in methods:
            cfg = copy.deepcopy(base)
            cfg.data.seed = 0  # same held-out prompts for every run; the seed varies the student only
            cfg.train = {
                **cfg.train,
                **METHODS[method],
                "seed": seed,
                "output_dir": str(Path(out_dir) / method / f"seed{seed}"),
            }
            start = time.perf_counter()
            res = run(cfg, eval_teacher=not teacher_done)
            if not teacher_done:
                rows.append(
                    {
                        "method": "teacher",
                        "seed": "-",
                        "rougeL": res["teacher"]["rougeL"],
                        "perplexity": res["teacher"]["perplexity"],
                        "seconds": 0.0,
                    }
                )
                teacher_done = True
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "rougeL": res["student"]["rougeL"],
                    "perplexity": res["student"]["perplexity"],
                    "seconds": time.perf_counter() - start,
                    "train_seconds": res["train_seconds"],
                }
            )
            (Path(out_dir) / "study.json").write_text(json.dumps(rows, indent=1))  # after every run
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean and spread over seeds per method."""
    lines = [
        "| method | seeds | ROUGE-L mean | ROUGE-L min..max | perplexity mean | train s/run |",
        "|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        rouge = [r["rougeL"] for r in rs]
        ppl = statistics.mean(r["perplexity"] for r in rs)
        secs = statistics.mean(r.get("train_seconds", 0.0) for r in rs)
        lines.append(
            f"| {method} | {len(rs)} | {statistics.mean(rouge):.2f} | {min(rouge):.2f}..{max(rouge):.2f}"
            f" | {ppl:.2f} | {secs:.0f} |"
        )
    return "\n".join([*lines, *gains(rows)])


def gains(rows: list[dict[str, Any]], reference: str = "kd") -> list[str]:
    """Lines: each method's ROUGE-L minus the reference's, paired by seed, with a 95 % t-interval."""
    by_seed = {(r["method"], r["seed"]): r["rougeL"] for r in rows}
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows):
        if method in (reference, "teacher"):
            continue
        seeds = [s for (m, s) in by_seed if m == method and (reference, s) in by_seed]
        if not seeds:
            continue
        mean, half = paired_interval(
            [by_seed[method, s] for s in seeds], [by_seed[reference, s] for s in seeds]
        )
        lines.append(
            f"{method} - {reference}: ROUGE-L {mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] "
            f"(95 % CI, {len(seeds)} paired seeds)"
        )
    return lines
