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
from typing import TYPE_CHECKING

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
       [--out DIR] [--no-teacher-cache] [--results FILE] [--reuse] [section.key=value ...]
                                                         KD and EA-KD students learning from SmolLM2: before
                                                         and after, in minutes on a CPU (docs/llm.md)
"""


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


def demo(argv: list[str]) -> int:
    """``eakd llm demo``: ``eakd.llm.demo.main``."""
    from eakd.llm.demo import main as demo_main

    return demo_main(argv)


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
