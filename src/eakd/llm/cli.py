"""``eakd llm train|cache|eval|demo``: LLM distillation from the command line. A user error (YAML syntax,
an unknown config key, a bad value or type, a missing file or offline model/data source, a directory
given as a file, a teacher cache that does not match, a run stopped by a non-finite loss) is a
ValueError / FileNotFoundError (ConfigError is a ValueError) naming the problem and the fix; ``main``
prints it as one line ``eakd llm CMD: message`` to stderr and exits 2."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from eakd.args import ArgumentParser
from eakd.engine.config import load_config

if TYPE_CHECKING:
    from eakd.llm.run import LLMRunConfig

USAGE = """usage: eakd llm {train,cache,eval,demo} ...

  train CONFIG [section.key=value ...] [--eval-teacher]   distil and evaluate (configs/llm/*.yaml)
  cache CONFIG [section.key=value ...] [--top-k K] [--out FILE]
                                                         run the teacher once: top-k log-probs + entropy
                                                         per token; train with model.teacher_cache=FILE
  eval MODEL [--data chatterbot|HUB_ID|FILE] [--eval-size N] [--max-new-tokens N]
                                                         ROUGE-L and perplexity of a model on held-out pairs
  demo [--steps N] [--seeds 0 1] [--methods sft kd rkl ea-kd] [--out DIR] [--teacher-cache]
                                                         SmolLM2-135M -> 2-layer student on chatterbot-corpus
"""


def read_run_config(path: str | None, overrides: list[str]) -> LLMRunConfig:
    """The ``LLMRunConfig`` of ``path`` with ``overrides`` (``eakd.engine.config.load_config``), its train
    section checked by building the EAKDConfig once (a bad value is a ConfigError now, not mid-run)."""
    from eakd.llm.run import LLMRunConfig, training_args

    cfg = load_config(path, overrides, schema=LLMRunConfig)
    training_args(cfg)
    return cfg


def train(argv: list[str]) -> int:
    """``eakd llm train CONFIG [overrides]``: one run; prints the held-out ROUGE-L and perplexity."""
    p = ArgumentParser(prog="eakd llm train")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=50")
    p.add_argument("--eval-teacher", action="store_true", help="also evaluate the teacher")
    a = p.parse_args(argv)
    from eakd.llm.run import run

    res = run(read_run_config(a.config, a.overrides), eval_teacher=a.eval_teacher)
    summary = {
        k: {x: res[k][x] for x in ("rougeL", "perplexity", "n")} for k in ("student", "teacher") if k in res
    }
    print(json.dumps({**summary, "train_seconds": round(res["train_seconds"], 1)}))
    return 0


def cache_cmd(argv: list[str]) -> int:
    """``eakd llm cache CONFIG``: write the offline teacher cache of a config's training data."""
    p = ArgumentParser(prog="eakd llm cache")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value (data and train.temperature/tau matter)")
    p.add_argument("--top-k", type=int, default=64, help="teacher log-probs kept per token")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default="runs/llm/teacher_cache.safetensors")
    a = p.parse_args(argv)
    from eakd.llm.run import write_cache

    start = time.perf_counter()
    cache = write_cache(read_run_config(a.config, a.overrides), a.out, a.top_k, a.batch_size)
    cover = cache.coverage()
    summary = {
        "file": a.out,
        "rows": len(cache.offsets) - 1,
        "tokens": cache.ids.shape[0],
        "top_k": cache.top_k,
        "vocab_size": cache.vocab_size,
        "top_k_mass_mean": round(float(cover.mean()), 4),
        "top_k_mass_p10": round(float(cover.quantile(0.1)), 4),
        "megabytes": round(sum(t.nbytes for t in (cache.ids, cache.logprobs, cache.entropy)) / 2**20, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    print(f"train from it with: eakd llm train {a.config} model.teacher_cache={a.out}")
    return 0


def evaluate_cmd(argv: list[str]) -> int:
    """``eakd llm eval MODEL``: evaluate a saved model folder, hub id or "smollm2"."""
    p = ArgumentParser(prog="eakd llm eval")
    p.add_argument("model")
    p.add_argument(
        "--data", default="chatterbot", help="chatterbot, a hub id or a json/jsonl/csv/parquet file"
    )
    p.add_argument("--prompt-column", default="instruction")
    p.add_argument("--context-column", default="context")
    p.add_argument("--response-column", default="response")
    p.add_argument("--eval-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-length", type=int, default=128)
    a = p.parse_args(argv)
    from eakd.llm.data import load_pairs, split_pairs
    from eakd.llm.evaluate import evaluate
    from eakd.llm.models import load_teacher

    model, tokenizer = load_teacher(a.model)
    pairs = load_pairs(a.data, a.prompt_column, a.context_column or None, a.response_column)
    _, held_out = split_pairs(pairs, a.eval_size, a.seed)
    res = evaluate(model, tokenizer, held_out, max_new_tokens=a.max_new_tokens, max_length=a.max_length)
    print(json.dumps({k: res[k] for k in ("rougeL", "perplexity", "n")}))
    for prompt, ref, out in res["samples"]:
        print(f"\nprompt: {prompt}\nreference: {ref}\noutput: {out}")
    return 0


def demo(argv: list[str]) -> int:
    """``eakd llm demo``: SFT / KD / RKL / EA-KD on chatterbot-corpus, one table (``eakd.llm.study``).

    ``benchmarks/llm_study.py`` runs the same study with a larger default budget.
    """
    from eakd.llm.study import METHODS

    p = ArgumentParser(prog="eakd llm demo")
    p.add_argument("--config", default=None, help="a run config (configs/llm/base.yaml layout)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--eval-size", type=int, default=100)
    p.add_argument("--out", default="runs/llm-demo")
    p.add_argument("--eval-teacher", action="store_true", help="also evaluate the teacher (slow on a CPU)")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument(
        "--teacher-cache",
        action="store_true",
        help="run the teacher once into OUT/teacher_cache.safetensors and train every run from it",
    )
    p.add_argument("--top-k", type=int, default=64, help="with --teacher-cache: log-probs kept per token")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    a = p.parse_args(argv)
    from eakd.llm.run import reuse_or_write_cache
    from eakd.llm.study import llm_study, table

    cfg = read_run_config(
        a.config,
        [
            f"train.max_steps={a.steps}",
            f"data.eval_size={a.eval_size}",
            f"train.warmup_steps={a.warmup_steps}",
            f"eval.max_new_tokens={a.max_new_tokens}",
            *a.overrides,
        ],
    )
    start = time.perf_counter()
    if a.teacher_cache:
        cfg.model.teacher_cache = f"{a.out}/teacher_cache.safetensors"
        cache, reused = reuse_or_write_cache(cfg, cfg.model.teacher_cache, a.top_k)
        mass = float(cache.coverage().mean())
        how = "reused" if reused else f"written in {time.perf_counter() - start:.0f} s"
        print(f"teacher cache ({how}): {cache.ids.shape[0]} tokens, mean top-{a.top_k} mass {mass:.3f}")
    result = llm_study(cfg, a.methods, a.seeds, a.out, a.eval_teacher)
    print(table(result))
    print(
        f"\n{len(a.methods) * len(a.seeds)} runs in {time.perf_counter() - start:.0f} s; results in {a.out}"
    )
    return 0


SUBCOMMANDS = {"train": train, "cache": cache_cmd, "eval": evaluate_cmd, "demo": demo}


def main(argv: list[str]) -> int:
    """Dispatch ``eakd llm SUBCOMMAND ...``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] not in SUBCOMMANDS:
        raise ValueError(f"unknown subcommand {argv[0]!r}; known: {', '.join(SUBCOMMANDS)} (eakd llm --help)")
    return SUBCOMMANDS[argv[0]](argv[1:])  # eakd.cli.main turns user errors into one line and exit 2
