"""``eakd demo``: EA-KD on Fashion-MNIST on a CPU, through the engine and the configs in configs/demo.

A teacher (configs/demo/teacher.yaml) is trained once and cached under ``eakd.paths.cache_dir()``; then
a 16x smaller student (configs/demo/kd.yaml) is trained alone, with KD and with EA-KD over several seeds,
a table of best and last top-1 is printed, and ``eakd report`` writes each run's plots. Runs go to
``--out`` (default runs/demo). ``eakd demo llm`` and ``eakd demo det`` run the LLM and detection demos.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from eakd.engine.config import Config, load_config, to_dict
from eakd.engine.loop import train
from eakd.paths import cache_dir
from eakd.report import report_command

# student settings: overrides of configs/demo/kd.yaml (which is EA-KD as it stands)
SETTINGS: dict[str, list[str]] = {
    "no-kd": ["distill.method=none", "distill.weighting=none", "distill.ce_weight=1.0"],
    "kd": ["distill.weighting=none"],
    "ea-kd": ["distill.weighting=ea"],
    "er-kd": ["distill.weighting=er", "distill.tau=4.0"],  # ER-KD as published: w = H_t at tau 4
    "inverse-kd": ["distill.weighting=inverse"],  # negative control: emphasises confident samples
}
DEMO_SETTINGS = ["no-kd", "kd", "ea-kd"]
OTHER_DEMOS = {"llm": ("eakd.llm.cli", "demo"), "det": ("eakd.detection.demo", "demo")}


def config_dir() -> Path:
    """configs/demo of this source tree (else of the current folder)."""
    here = Path(__file__).resolve().parents[3] / "configs" / "demo"
    return here if here.is_dir() else Path("configs") / "demo"


@dataclass
class Job:
    """One engine run: ``eakd train config overrides``, its console output sent to ``log``."""

    name: str
    config: Path
    overrides: list[str]
    log: Path


def run_job(job: Job) -> dict[str, Any]:
    """Train ``job`` with the engine; returns its summary plus ``wall_s`` (start-up and evaluation too)."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(job.log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        summary = train(load_config(job.config, job.overrides))
    return {**summary, "wall_s": time.perf_counter() - start}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _done(job: Job, summary: dict[str, Any]) -> None:
    best, last = summary["best"], summary["last"]["metrics"].get(summary["metric"], float("nan"))
    print(
        f"  {job.name}: best top-1 {best['value']:.2f} (epoch {best['epoch']}), last {last:.2f}, "
        f"{summary['wall_s']:.0f} s",
        flush=True,
    )


def run_jobs(batches: list[list[Job]], jobs: int, threads: int) -> dict[str, dict[str, Any]]:
    """Run the batches in order, the jobs of a batch in ``jobs`` processes of ``threads`` torch threads
    each (jobs 1: one after another in this process). Returns the summaries by job name."""
    results: dict[str, dict[str, Any]] = {}
    if jobs <= 1:
        for job in (j for batch in batches for j in batch):
            results[job.name] = run_job(job)
            _done(job, results[job.name])
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        for batch in batches:
            futures = {pool.submit(run_job, job): job for job in batch}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    results[job.name] = future.result()
                except Exception as err:
                    raise RuntimeError(f"run {job.name} failed; its log: {job.log}") from err
                _done(job, results[job.name])
    return results


def teacher_dir(cfg: Config) -> Path:
    """Cache folder of the teacher run ``cfg``: keyed by its settings (not by its name or output folder)."""
    settings = to_dict(replace(cfg, experiment=replace(cfg.experiment, name="", output_dir="")))
    key = hashlib.sha256(yaml.safe_dump(settings, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir("demo") / f"teacher-{cfg.model.student}-{key}"


def check_data(cfg: Config) -> None:
    """Fail early, with the data loader's message (where it looked, how to fetch), if the data is missing."""
    from eakd.vision.data import build_dataset

    d = cfg.data
    build_dataset(d.name, d.root, train=False, download=d.download, **d.options)


def run_study(
    out: Path,
    seeds: list[int],
    settings: list[str],
    overrides: list[str] | None = None,
    student_overrides: list[str] | None = None,
    jobs: int = 1,
    threads: int = 1,
) -> dict[str, Any]:
    """The teacher (trained, or reused from the cache), then each student setting x seed.

    overrides: for every run, teacher included (e.g. ``data.root=DIR``); student_overrides: for the
    students only (e.g. ``train.epochs=3``). Returns {"teacher": summary, "runs": {setting: [summary per
    seed]}, "seeds": seeds, "wall_s": seconds}, also written to ``out/study.json``.
    """
    start = time.perf_counter()
    common = list(overrides or [])
    cdir = config_dir()
    t_cfg = load_config(cdir / "teacher.yaml", common)
    check_data(t_cfg)
    t_dir = teacher_dir(t_cfg)
    t_ckpt = t_dir / "best.pt"
    first: list[Job] = []
    if (t_dir / "summary.json").is_file() and t_ckpt.is_file():
        print(f"reusing the cached teacher {t_dir}", flush=True)
    else:
        where = [f"experiment.output_dir={t_dir.parent}", f"experiment.name={t_dir.name}"]
        first.append(Job("teacher", cdir / "teacher.yaml", [*common, *where], t_dir / "train.log"))
    runs: list[Job] = []
    for setting in settings:
        for seed in seeds:
            name = f"{setting}-seed{seed}"
            student = [
                *common,
                f"experiment.output_dir={out}",
                f"experiment.name={name}",
                f"experiment.seed={seed}",
                f"model.teacher_checkpoint={t_ckpt}",
                *(student_overrides or []),
                *SETTINGS[setting],
            ]
            runs.append(Job(name, cdir / "kd.yaml", student, out / "logs" / f"{name}.log"))
    # runs without a teacher may train beside it; the others wait for it
    no_teacher = [j for j in runs if load_config(j.config, j.overrides).distill.method == "none"]
    batches = [first + no_teacher, [j for j in runs if j not in no_teacher]]
    print(f"{len(first) + len(runs)} runs in {jobs} process(es); logs in {out / 'logs'}", flush=True)
    done = run_jobs(batches, jobs, threads)
    teacher = done.get("teacher") or json.loads((t_dir / "summary.json").read_text())
    result = {
        "teacher": teacher,
        "runs": {s: [done[f"{s}-seed{seed}"] for seed in seeds] for s in settings},
        "seeds": seeds,
        "wall_s": time.perf_counter() - start,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def top1(summary: dict[str, Any]) -> tuple[float, float]:
    """(best, last) top-1 of a run summary."""
    return float(summary["best"]["value"]), float(summary["last"]["metrics"][summary["metric"]])


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample std; 0 for one value) with two decimals."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):6.2f} ± {spread:4.2f}"


def format_table(result: dict[str, Any]) -> str:
    """Best and last top-1 (%) per setting, mean ± std over seeds, plus the setting of the runs."""
    teacher = result["teacher"]
    some = next(iter(result["runs"].values()))[0]
    lines = [
        f"teacher: top-1 {top1(teacher)[1]:.2f} % ({teacher['trainable_params']:,} parameters); "
        f"student: {some['trainable_params']:,} parameters, {some['steps']} optimiser steps, "
        f"{len(result['seeds'])} seeds",
        "",
        f"| {'setting':<10} | {'best top-1 (%)':>14} | {'last top-1 (%)':>14} | {'train s/run':>11} |",
        f"|{'-' * 12}|{'-' * 16}|{'-' * 16}|{'-' * 13}|",
    ]
    for setting, runs in result["runs"].items():
        best, last = zip(*(top1(r) for r in runs), strict=True)
        secs = statistics.fmean(r["train_time_s"] for r in runs)
        lines.append(
            f"| {setting:<10} | {mean_std(list(best)):>14} | {mean_std(list(last)):>14} | {secs:>11.0f} |"
        )
    lines += [
        "",
        "per seed (best / last): "
        + "; ".join(
            f"{s} " + ", ".join(f"{b:.2f}/{la:.2f}" for b, la in (top1(r) for r in runs))
            for s, runs in result["runs"].items()
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``eakd demo [--seeds 0 1 2] [--out DIR] [--jobs N] [-- key=value ...]``, ``eakd demo llm|det ...``.

    The overrides (after ``--`` when they follow a list option) apply to every run, teacher included."""
    if argv and argv[0] in OTHER_DEMOS:
        module, func = OTHER_DEMOS[argv[0]]
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    parser = argparse.ArgumentParser(
        prog="eakd demo",
        description="Fashion-MNIST: a small student alone, with KD and with EA-KD (configs/demo). "
        "`eakd demo llm` and `eakd demo det` run the LLM and detection demos.",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds (default 0 1 2)"
    )
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=DEMO_SETTINGS)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="runs folder (default runs/demo)")
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at a time (default: 2 or 1 CPU)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument(
        "--student-epochs", type=int, help="students' epochs (default: configs/demo/kd.yaml's)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="config overrides for every run, teacher too (e.g. data.root=DIR); put them after --",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        epochs = [] if args.student_epochs is None else [f"train.epochs={args.student_epochs}"]
        result = run_study(
            args.out, args.seeds, args.settings, args.overrides, epochs, args.jobs, args.threads
        )
    except FileNotFoundError as err:
        print(f"eakd demo: {err}", file=sys.stderr)
        return 2
    dirs = [str(args.out / f"{s}-seed{seed}") for s in args.settings for seed in args.seeds]
    report_command(dirs)
    table = format_table(result)
    (args.out / "results.md").write_text(table + "\n")
    print(f"\n{table}\n\ntotal {time.perf_counter() - start:.0f} s; runs, plots and report.md in {args.out}")
    return 0
