"""The LLM instruction-following study behind ``eakd llm demo`` and benchmarks/llm_study.py (protocol in
docs/llm.md): KD and EA-KD arms on one teacher, one shared warm-started student, the same data order and
learning rate per seed, compared with KD paired by seed through the shared study runner (``eakd.study``:
seed-major, saved after every run, paired 95 % intervals)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from eakd.llm import progress
from eakd.llm.cache import CACHE_BATCH, TOP_K
from eakd.llm.models import load_teacher
from eakd.llm.run import LLMRunConfig, run, split_rows, training_args, warm_start_student
from eakd.llm.run_cache import cache_tau, reuse_or_write_cache
from eakd.llm.settings import TokenLossSettings
from eakd.study import code_label, run_study, study_table

# train-section overrides per arm (``TokenLossSettings`` fields), everything else is shared; the unweighted
# arms name tau 2 too: they read the study's tau-2 teacher cache (their loss uses no entropies)
METHODS: dict[str, dict[str, Any]] = {
    "kd": {"divergence": "fkl", "weighting": "none", "tau": 2.0},
    "ea-kd": {"divergence": "fkl", "weighting": "ea", "tau": 2.0},
    "ea-kd-tau1": {"divergence": "fkl", "weighting": "ea", "tau": 1.0},
    "kd-ce": {"divergence": "fkl", "weighting": "none", "tau": 2.0, "kd_weight": 0.5, "ce_weight": 0.5},
    "ea-kd-ce": {"divergence": "fkl", "weighting": "ea", "tau": 2.0, "kd_weight": 0.5, "ce_weight": 0.5},
    "inverse-kd": {"divergence": "fkl", "weighting": "inverse", "tau": 2.0},
    "ea-kd-norm": {"divergence": "fkl", "weighting": "ea", "tau": 2.0, "weight_norm": "mean"},
}
for _arm in METHODS.values():  # every arm is valid loss settings (checked on import)
    TokenLossSettings(**_arm)
# each arm against KD, paired by seed (the +CE arms too: what the hard-label term adds shows against KD)
REFERENCE = {arm: "kd" for arm in METHODS if arm != "kd"}
METRICS = {
    "rougeL": "test ROUGE-L sampled (best val)",
    "rougeL_greedy": "greedy (best val)",
    "rougeL_last": "sampled (last)",
    "perplexity": "perplexity",
    "top1_confident": "top-1 agr. p_max>0.9",
    "top1_rest": "top-1 agr. rest",
    "kl_at_start": "KL at start",
    "train_s": "train s/run",
    "run_s": "all s/run",
}
COMPARE = ["rougeL", "rougeL_greedy", "rougeL_last"]
# seconds per batch or step of each progress kind (``eakd.llm.progress.KINDS``; "train" from the teacher
# cache, "train_online" with the teacher; batches of 8 rows to train and cache, of 16 to evaluate; a
# generation of 48 tokens, greedy or sampled) for SmolLM2-135M and its 6-layer student, measured once on
# an idle 2-core CPU: only their ratios matter (the progress bar's ETA)
COST = {"cache": 1.2, "train": 0.75, "train_online": 1.6, "forward": 1.6, "agreement": 5.3, "generate": 2.8}


def cache_file(out_dir: str | Path, tau: float) -> str:
    """The study's teacher cache for entropy temperature ``tau`` (one per tau among the arms)."""
    return str(Path(out_dir) / f"teacher_cache_tau{tau:g}.safetensors")


def method_config(
    base: LLMRunConfig, method: str, seed: int, out_dir: str | Path, teacher_cache: bool = False
) -> LLMRunConfig:
    """``base`` with ``method``'s train settings, the training seed (data order) and the output folder
    ``out_dir/<method>/seed<k>``; the split stays that of data seed 0; with ``model.warm_start_steps`` >
    0 every arm starts from the study's own warm start ``out_dir/warm-start`` (written by the first run);
    with ``teacher_cache``, the arm reads the cache of its tau (``cache_file``)."""
    cfg = copy.deepcopy(base)
    cfg.data.seed = 0
    if cfg.model.warm_start_steps:
        cfg.model.warm_start = str(Path(out_dir) / "warm-start")
    cfg.train = {
        **cfg.train,
        **METHODS[method],
        "seed": seed,
        "output_dir": str(Path(out_dir) / method / f"seed{seed}"),
    }
    if teacher_cache:
        cfg.model.teacher_cache = cache_file(out_dir, cache_tau(training_args(cfg)))
    return cfg


def run_metrics(res: dict[str, Any]) -> dict[str, float]:
    """A run's study metrics (``METRICS``) from its results.json content."""
    best, last, diag = res["student"], res["student_last"], res["diagnostics"]
    return {
        "rougeL": best["rougeL"],
        "rougeL_greedy": best["rougeL_greedy"],
        "rougeL_last": last["rougeL"],
        "rougeL_greedy_last": last["rougeL_greedy"],
        "perplexity": best["perplexity"],
        "val_rougeL": res["validation"]["best"]["rougeL"],
        "best_step": res["validation"]["best"]["step"],
        "kl_at_start": res["kl_at_start"],
        "kl_confident": diag["confident"]["kl"],
        "kl_rest": diag["rest"]["kl"],
        "top1_confident": diag["confident"]["top1"],
        "top1_rest": diag["rest"]["top1"],
        "train_s": res["train_seconds"],
        **{
            f"{k}_s": res["seconds"][part]
            for k, part in (("run", "total"), ("val", "validation"), ("test", "test"))
            if "seconds" in res
        },
    }


def planned_work(
    base: LLMRunConfig, rows: int, val: int, test: int, teacher_cache: bool
) -> tuple[dict[str, float], dict[str, float]]:
    """(the study's planned work in progress units: "cache" (each cache; 0 without), "warm_start" and "run"
    (each run), the cost per kind (``COST``) it was counted with) for ``base`` on ``rows`` training rows and
    ``val`` / ``test`` pairs. A run counts two test evaluations (at the best and the last step)."""
    e, args = base.eval, training_args(base)
    cost = {**COST, "train": COST["train"] if teacher_cache else COST["train_online"]}
    del cost["train_online"]
    batches = lambda n, size: -(-n // size)  # noqa: E731
    steps = args.max_steps  # else epochs of optimiser steps
    if steps <= 0:
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        steps = math.ceil(args.num_train_epochs * batches(rows, per_step))
    checks = len({s for s in range(1, steps + 1) if e.every and s % e.every == 0} | {steps})
    gen = checks * batches(val, e.batch_size) + 2 * (e.sampling_seeds + 1) * batches(test, e.batch_size)
    one_run = (
        cost["agreement"] * (batches(val, e.batch_size) + batches(test, e.batch_size))
        + cost["train"] * steps
        + cost["generate"] * gen
        + cost["forward"] * 2 * batches(test, e.batch_size)
    )
    work = {
        "cache": cost["cache"] * batches(rows, CACHE_BATCH) if teacher_cache else 0.0,
        "warm_start": cost["train"] * base.model.warm_start_steps,
        "run": one_run,
    }
    return work, cost


def llm_study(
    base: LLMRunConfig,
    methods: list[str],
    seeds: list[int],
    out_dir: str | Path,
    eval_teacher: bool = False,
    teacher_cache: bool = False,
    top_k: int = TOP_K,
    results: Path | None = None,
    reuse: bool = False,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Every method x seed (``eakd.study.run_study``, seed-major; ``results``: also saved there; ``reuse``:
    keep the finished runs of the same protocol). teacher_cache: run the teacher once per tau into
    ``cache_file`` (reused when it matches) and train every arm from it. The shared warm start
    (``model.warm_start_steps``) is written before the first run. With ``eval_teacher`` the teacher's own
    test ROUGE-L and perplexity come from the first run, under "teacher". show_progress: one progress bar
    with an ETA over the whole study (``eakd.llm.progress``). The result's "seconds" holds the wall time of
    the teacher cache(s), the warm start and the runs."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    first = method_config(base, methods[0], seeds[0], out_dir, teacher_cache)
    teacher_model, tokenizer = load_teacher(first.model.teacher)
    rows, val, test = split_rows(first, tokenizer)
    caches = {m: method_config(base, m, seeds[0], out_dir, True) for m in methods} if teacher_cache else {}
    n_caches = len({str(c.model.teacher_cache) for c in caches.values()})
    n_runs = len(methods) * len(seeds)
    work, cost = planned_work(base, len(rows), len(val), len(test), teacher_cache)
    total = work["cache"] * n_caches + work["warm_start"] + work["run"] * n_runs
    bar = progress.Progress(total, cost, "LLM demo") if show_progress else None
    mark = 0.0

    def done(units: float) -> None:  # a phase ended: the bar to its planned mark
        nonlocal mark
        mark += units
        if bar is not None:
            bar.settle(mark)

    seconds: dict[str, float] = {}
    teacher: dict[str, Any] = {}

    def train_one(method: str, seed: int) -> dict[str, float]:
        res = run(method_config(base, method, seed, out_dir, teacher_cache), eval_teacher and not teacher)
        teacher.update(res.get("teacher", {}))
        done(work["run"])
        return run_metrics(res)

    with progress.active(bar) if bar is not None else contextlib.nullcontext():
        start = time.perf_counter()
        written: set[str] = set()
        for cfg in caches.values():
            path = str(cfg.model.teacher_cache)
            if path not in written:
                written.add(path)
                progress.phase("teacher cache")
                cache, reused = reuse_or_write_cache(cfg, path, top_k, CACHE_BATCH)
                mass, how = float(cache.coverage().mean()), "reused" if reused else "written"
                print(
                    f"teacher cache {path} ({how}): {cache.ids.shape[0]} tokens, top-{top_k} mass {mass:.3f}"
                )
                done(work["cache"])
        seconds["teacher_cache"] = time.perf_counter() - start
        start = time.perf_counter()
        if first.model.warm_start is not None:
            warm_start_student(first, teacher_model, tokenizer)  # written once here, read by every run
        seconds["warm_start"] = time.perf_counter() - start
        done(work["warm_start"])
        del teacher_model
        protocol = {"base": dataclasses.asdict(base), "methods": methods, "teacher_cache": teacher_cache}
        start = time.perf_counter()
        result = run_study(train_one, methods, seeds, Path(out_dir), protocol, reuse=reuse, results=results)
        seconds["runs"] = time.perf_counter() - start
    result["seconds"] = seconds
    if teacher:
        result["teacher"] = {k: teacher[k] for k in ("rougeL", "rougeL_greedy", "perplexity")}
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: the teacher (if evaluated), then ``eakd.study.study_table`` with each arm minus KD paired
    by seed, only when at least two seeds finished (one seed gives no interval)."""
    lines = []
    if "teacher" in result:
        t = result["teacher"]
        lines += [f"teacher: test ROUGE-L {t['rougeL']:.2f} sampled, {t['rougeL_greedy']:.2f} greedy", ""]
    metrics = {
        k: v for k, v in METRICS.items() if any(k in m for r in result["runs"].values() for m in r.values())
    }
    seeds = max((len(r) for r in result["runs"].values()), default=0)
    reference = REFERENCE if seeds >= 2 else None
    compare = [k for k in COMPARE if k in metrics]
    return "\n".join([*lines, study_table(result, metrics, reference, compare=compare)])


def demo_time(result: dict[str, Any]) -> str:
    """One line: how long the saved demo (``eakd llm demo --results``) took, its phases, the machine and
    its load average (other jobs may share it)."""
    d, sec, prov = result["demo"], result.get("seconds", {}), result["demo"]["provenance"]
    steps = result["protocol"]["base"]["train"].get("max_steps", "?")
    start, end = d["loadavg_start"][0], d["loadavg_end"][0]  # the 1-minute load averages
    return (
        f"_Measured: the demo ({', '.join(result['arms'])}; {steps} steps, {len(result['seeds'])} seed) took "
        f"{d['wall_s'] / 60:.1f} min (teacher cache {sec.get('teacher_cache', 0):.0f} s, warm start "
        f"{sec.get('warm_start', 0):.0f} s, runs {sec.get('runs', 0):.0f} s) on {prov['machine']['cpus']} "
        f"CPU cores, load average {start:.1f} at start and {end:.1f} at the end; {prov['date']}, code "
        f"{code_label(prov)}._"
    )
