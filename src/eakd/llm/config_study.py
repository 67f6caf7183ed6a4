"""Studies over one LLM run config (``eakd llm study``, ``eakd llm demo``, benchmarks/llm_study.py): the
machinery of ``eakd study`` (``eakd.config_study``: arms as override lists of one config, every arm at the
same seeds, seed-major, saved after every run, resumable, paired intervals, report.md and the plot)
driving ``eakd.llm.run.run`` through ``train_one``.

    eakd llm study llm/base --arm kd=train.weighting=none --arm ea-kd=train.weighting=ea --seeds 0-4
    result = llm_study("llm/base", {"kd": ["train.weighting=none"], "ea-kd": ["train.weighting=ea"]},
                       [0, 1, 2], Path("runs/llm-study"))

A run is ``eakd llm train CONFIG *common *arm`` with ``train.seed`` the seed (the data order; the split stays
``data.seed``'s) in ``OUT/<arm>-seed<seed>``; its metrics (``run_metrics``) come from its results.json. The
study sets ``train.output_dir`` and ``train.seed`` itself.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from pathlib import Path
from typing import Any

from eakd.config_study import StudyKind, config_study
from eakd.llm.cache import CACHE_BATCH
from eakd.llm.cli import read_run_config
from eakd.llm.progress import QUIET, ProgressHook

# what the study sets in every run (an arm may not)
FIXED = ("train.output_dir", "train.seed")


def run_metrics(res: dict[str, Any]) -> dict[str, float]:
    """A run's flat study metrics from its results.json content (``eakd.llm.run.run``). On the test split:
    ROUGE-L sampled (the primary) and greedy and the perplexity of the references, at the best validation
    step (``best_``, the selected student) and at the last (``last_``, with ``eval.test_last``); the
    teacher-agreement diagnostics at the best (``kl_confident``, ``kl_rest``, ``top1_confident``,
    ``top1_rest``). On validation: the best
    greedy ROUGE-L and its step, and the per-token KL(teacher || student) in nats, top-1 agreement and
    perplexity before distillation (``val_*_start``) and of the selected student (``val_kl``, ``val_top1``,
    ``val_perplexity``; over ``val_tokens`` tokens). Seconds: training (``train_s``, of which validation
    ``val_s``), the evaluation after it (``test_s``), the whole run (``run_s``)."""
    best, diag = res["student"], res["diagnostics"]
    start, end = res["validation_start"], res["validation_end"]
    last = res.get("student_last")  # none with eval.test_last false
    return {
        **{f"best_{k}": best[k] for k in ("rougeL", "rougeL_greedy", "perplexity")},
        **({} if last is None else {f"last_{k}": last[k] for k in ("rougeL", "rougeL_greedy", "perplexity")}),
        "val_rougeL": res["validation"]["best"]["rougeL"],
        "best_step": res["validation"]["best"]["step"],
        **{f"val_{k}_start": start[k] for k in ("kl", "top1", "perplexity")},
        **{f"val_{k}": end[k] for k in ("kl", "top1", "perplexity", "tokens")},
        **{f"{k}_{part}": diag[part][k] for k in ("kl", "top1") for part in ("confident", "rest")},
        "train_s": res["seconds"]["train"],
        "val_s": res["seconds"]["validation"],
        "test_s": res["seconds"]["test"],
        "run_s": res["seconds"]["total"],
    }


def train_one(
    config: str | Path | None, overrides: list[str], seed: int, folder: Path, progress: ProgressHook = QUIET
) -> dict[str, float]:
    """One LLM run of a study (``eakd.config_study.train_arm``'s ``run_one``): ``config`` with
    ``overrides`` at training seed ``seed``, trained and evaluated in ``folder`` (``eakd.llm.run.run``,
    its work reported to ``progress``); its ``run_metrics``."""
    from eakd.llm.run import run

    cfg = read_run_config(config, [*overrides, f"train.output_dir={folder}", f"train.seed={seed}"])
    return run_metrics(run(cfg, progress=progress))


def run_settings(cfg: Any) -> dict[str, Any]:
    """What defines an LLM config's runs but their seed and folder (``FIXED``), as plain data."""
    settings = dataclasses.asdict(cfg)
    settings["train"] = {k: v for k, v in settings["train"].items() if f"train.{k}" not in FIXED}
    return settings


def default_arms(cfg: Any) -> dict[str, list[str]]:
    """The common question for ``cfg``'s divergence M (forward KL: "kd"): M unweighted, with EA (the
    config's tau) and with ER (w = H_t at its published tau 4): {"M": [...], "ea-M": [...], "er-M": [...]}."""
    from eakd.llm.run import training_args

    args = training_args(cfg)
    if args.kd_weight == 0:
        raise ValueError("the config distils nothing (train.kd_weight: 0): name the arms with --arm")
    method = "kd" if args.divergence == "fkl" else args.divergence
    return {
        method: ["train.weighting=none"],
        f"ea-{method}": ["train.weighting=ea"],
        f"er-{method}": ["train.weighting=er", "train.tau=null"],
    }


def cache_file(out: Path, tau: float) -> Path:
    """A study's teacher cache for entropy temperature ``tau`` (one per tau among the arms)."""
    return out / f"teacher_cache_tau{tau:g}.safetensors"


def prepare(
    config: str | Path | None, arms: dict[str, list[str]], common: list[str], out: Path, teacher_cache: bool,
    progress: ProgressHook = QUIET,
) -> tuple[dict[str, list[str]], dict[str, float]]:  # fmt: skip
    """What every run shares, written once before the first: with ``teacher_cache``, the teacher's cache of
    each entropy temperature among the arms that read the dataset's responses and name no cache
    (``cache_file``; reused when it matches the config); the warm start (``model.warm_start``) when its
    folder holds none yet. Returns (arm -> the overrides that make it read its cache, the seconds of the
    caches and the warm start)."""
    from eakd.llm.models import load_teacher
    from eakd.llm.run import training_args, warm_start_student
    from eakd.llm.run_cache import cache_tau, reuse_or_write_cache

    extra: dict[str, list[str]] = {}
    written: set[Path] = set()  # each tau's cache once, shared by the arms of that tau
    begin = time.perf_counter()
    for arm, overrides in arms.items():
        cfg = read_run_config(config, [*common, *overrides])
        args = training_args(cfg)
        if teacher_cache and cfg.model.teacher_cache is None and not args.generation().generates():
            path = cache_file(out, cache_tau(args))
            if path not in written:
                written.add(path)
                progress.phase("teacher cache")
                cache, reused = reuse_or_write_cache(cfg, path, CACHE_BATCH, progress)
                how, exact = "reused" if reused else "written", cache.top_k - cache.samples
                print(
                    f"teacher cache {path} ({how}): {cache.ids.shape[0]} tokens, {cache.top_k} per token "
                    f"({cache.samples} drawn), top-{exact} mass {float(cache.coverage().mean()):.3f}"
                )
            extra[arm] = [f"model.teacher_cache={path}"]
    cached = time.perf_counter()
    first = read_run_config(config, [*common, *next(iter(arms.values())), *next(iter(extra.values()), [])])
    folder = first.model.warm_start
    if folder is not None and not (Path(folder) / "config.json").is_file():
        teacher, tokenizer = load_teacher(first.model.teacher)
        warm_start_student(first, teacher, tokenizer, progress)  # written once here, read by every run
    seconds = {"teacher_cache": cached - begin, "warm_start": time.perf_counter() - cached}
    return extra, seconds


def llm_study(
    config: str | Path | None,
    arms: dict[str, list[str]],
    seeds: list[int] | dict[str, list[int]],
    out: Path,
    common: list[str] | None = None,
    protocol: dict[str, Any] | None = None,
    jobs: int = 1,
    threads: int = 1,
    reuse: bool = False,
    results: Path | None = None,
    info: dict[str, Any] | None = None,
    metric: str | None = None,
    teacher_cache: bool = False,
    progress: ProgressHook = QUIET,
) -> dict[str, Any]:
    """Every arm x seed of the LLM run config ``config`` (None: the defaults) through
    ``eakd.config_study.config_study`` (the arguments as there), after ``prepare`` (the teacher caches with
    ``teacher_cache``, the warm start). protocol: default the resolved config with ``common`` (without
    ``FIXED``) and whether the arms read a teacher cache the study wrote. progress: the hook the caches,
    the warm start and every run report to (``eakd.llm.progress``). The result also holds "seconds": the
    teacher caches', the warm start's and the runs'."""
    common = list(common or [])
    if protocol is None:
        protocol = {"config": run_settings(read_run_config(config, common)), "teacher_cache": teacher_cache}
    extra, seconds = prepare(config, arms, common, out, teacher_cache, progress)
    start = time.perf_counter()
    result = config_study(
        config, arms, seeds, out, common, protocol, jobs, threads, reuse, results,
        {**(info or {}), "seconds": seconds}, metric, run_one=partial(train_one, progress=progress),
        extra=extra,
    )  # fmt: skip
    result["seconds"]["runs"] = time.perf_counter() - start
    return result


# LLM run configs: ``eakd llm study``
LLM = StudyKind("eakd llm study", read_run_config, run_settings, FIXED, default_arms, llm_study)
