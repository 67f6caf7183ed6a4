"""``eakd demo``: EA-KD on Fashion-MNIST on a CPU, through the engine and the packaged configs demo/*.

A teacher (demo/teacher) is trained once and cached under ``eakd.paths.cache_dir()``; then a 16x smaller
student (demo/kd) is trained alone, with KD and with EA-KD over several seeds (``eakd study``'s code path,
``eakd.config_study``: seed-major, saved after every run), a table of best and last top-1 is printed, and
``eakd report`` writes each run's plots and the study's report.md and differences.png. Runs go to
``--out`` (default runs/demo under the current folder). Data: the local copy (``make fetch``), else
torchvision's download into the eakd cache. The LLM and detection demos are ``eakd llm demo`` and ``eakd
det demo``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset, Subset

from eakd.args import ArgumentParser, one_line
from eakd.config_study import config_study
from eakd.engine.catalog import config_root
from eakd.engine.config import Config, load_config, to_dict
from eakd.engine.loop import train
from eakd.engine.task import Task, build_task
from eakd.paths import cache_dir
from eakd.report import report_command
from eakd.study import seed_plan, study_table
from eakd.study_report import write_study_report
from eakd.vision.arms import REFERENCE, SETTINGS
from eakd.vision.datasets import build_dataset

VALIDATION_SIZE = 5000  # training images outside the student subset, for recipe pilots (validation_set)
DEMO_SETTINGS = ["no-kd", "kd", "ea-kd"]
METRICS = {"last_top1": "last top-1 (%)", "best_top1": "best top-1 (%)", "train_s": "train s/run"}


def config_dir() -> Path:
    """The packaged demo configs (``eakd configs demo/``)."""
    return config_root() / "demo"


def teacher_dir(cfg: Config) -> Path:
    """Cache folder of the teacher run ``cfg``: keyed by its settings (not by its name or output folder)."""
    settings = to_dict(replace(cfg, experiment=replace(cfg.experiment, name="", output_dir="")))
    key = hashlib.sha256(yaml.safe_dump(settings, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir("demo") / f"teacher-{cfg.model.student}-{key}"


def check_data(cfg: Config) -> None:
    """Fail early, with the data loader's message (where it looked, how to fetch), if the data is missing.

    Fashion-MNIST at its default place (no data.root) that is not there yet is downloaded there first
    (torchvision); FileNotFoundError when that fails too (no internet), naming the folder.
    """
    from eakd.vision.datasets import data_root, find_fashion_mnist

    d = cfg.data
    if d.name == "fashion_mnist" and d.root is None and not d.download and find_fashion_mnist() is None:
        folder = data_root(None) / "FashionMNIST" / "raw"
        print(f"Fashion-MNIST is not in {folder}: downloading it there (torchvision)", flush=True)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints every failed mirror
                build_dataset(d.name, None, train=False, download=True)  # fetches both splits
        except (RuntimeError, OSError) as err:
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {folder} and torchvision's download failed ({one_line(err)}): "
                "connect to the internet, or put its four idx files there (`make fetch` in a clone)"
            ) from None
    build_dataset(d.name, d.root, train=False, download=d.download, **d.options)


def validation_set(cfg: Config, size: int = VALIDATION_SIZE) -> Dataset:
    """``size`` training images outside the student subset (``data.train_subset``), spread evenly over the
    rest of the training split, with the eval transform: for choosing a recipe without the test set."""
    d = cfg.data
    full = build_dataset(d.name, d.root, train=True, download=d.download, augment=False, **d.options)
    n = len(full)  # type: ignore[arg-type]
    taken = set(torch.linspace(0, n - 1, d.train_subset or n).round().long().tolist())
    rest = [i for i in range(n) if i not in taken]
    if len(rest) < size:
        raise ValueError(f"only {len(rest)} training images lie outside the student subset, need {size}")
    keep = torch.linspace(0, len(rest) - 1, size).round().long().tolist()
    subset = Subset(full, [rest[i] for i in keep])
    subset.classes = full.classes  # type: ignore[attr-defined]
    return subset


def validation_task(cfg: Config) -> Task:
    """``cfg``'s task evaluated on ``validation_set`` instead of the test split (recipe pilots)."""
    task = build_task(cfg)
    task.eval_set = validation_set(cfg)  # type: ignore[attr-defined]
    return task


def train_logged(config: Path, overrides: list[str], log: Path) -> dict[str, Any]:
    """``eakd train config overrides`` with its console output sent to ``log``; returns the run summary."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        return train(load_config(config, overrides))


def teacher_run(common: list[str]) -> dict[str, Any]:
    """The demo's teacher: reused from the cache when one with the same settings exists, else trained."""
    cfg = load_config(config_dir() / "teacher.yaml", common)
    check_data(cfg)
    t_dir = teacher_dir(cfg)
    if (t_dir / "summary.json").is_file() and (t_dir / "best.pt").is_file():
        print(f"reusing the cached teacher {t_dir}", flush=True)
        summary = json.loads((t_dir / "summary.json").read_text())
    else:
        print(f"training the teacher into {t_dir}", flush=True)
        where = [
            f"experiment.output_dir={t_dir.parent}",
            f"experiment.name={t_dir.name}",
            "train.resume=auto",
        ]
        summary = train_logged(config_dir() / "teacher.yaml", [*common, *where], t_dir / "train.log")
    return {**summary, "checkpoint": str(t_dir / "best.pt")}


def check_teacher(teacher: dict[str, Any], earlier: dict[str, Any]) -> None:
    """Refuse to mix runs distilled from different teachers: ValueError when the study result ``earlier``
    recorded a teacher whose top-1 differs from ``teacher``'s (this machine's, cached or rebuilt)."""
    recorded = earlier.get("teacher", {}).get("last", {}).get("metrics", {}).get("top1")
    here = teacher["last"]["metrics"]["top1"]
    if recorded is not None and recorded != here:
        raise ValueError(
            f"the teacher here has top-1 {here} %, the earlier study's {recorded} %: its runs cannot be "
            "reused with this teacher (move the study file away to start anew)"
        )


def demo_study(
    out: Path,
    seeds: list[int] | dict[str, list[int]],
    settings: list[str],
    overrides: list[str] | None = None,
    student_overrides: list[str] | None = None,
    jobs: int = 1,
    threads: int = 1,
    results: Path | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """The teacher, then each student setting x seed: ``eakd study``'s ``eakd.config_study.config_study``
    on demo/kd with the settings' override lists (SETTINGS) as arms.

    seeds: for every setting, or setting -> its seeds. overrides: for every run, teacher included (e.g.
    ``data.root=DIR``); student_overrides: for the students only (e.g. ``train.epochs=3``). results: also
    save the study there (``results/``). reuse: keep the finished runs of an earlier study (``results``,
    then ``out/study.json``) of the same protocol, of the settings whose overrides (SETTINGS) are
    unchanged; ValueError when its teacher's top-1 differs from this one's (``check_teacher``). Returns
    the study result with the teacher's summary under "teacher".
    """
    common = list(overrides or [])
    teacher = teacher_run(common)
    # no machine paths: a study resumes from its results file on another machine (the teacher is
    # rebuilt there from its settings and checked by its top-1)
    protocol = {"overrides": common, "student_overrides": student_overrides or []}
    for path in (results, out / "study.json"):
        if reuse and path is not None and path.is_file():
            earlier = json.loads(path.read_text())
            if earlier.get("protocol") == protocol:
                check_teacher(teacher, earlier)
    plan = seed_plan(settings, seeds)
    print(
        f"{sum(map(len, plan.values()))} student runs planned in {jobs} process(es); "
        f"logs in {out / 'logs'}",
        flush=True,
    )
    students = [*common, *(student_overrides or []), f"model.teacher_checkpoint={teacher['checkpoint']}"]
    report = {"metric": "top1", "reference": {a: r for a, r in REFERENCE.items() if a in settings}}
    return config_study(
        config_dir() / "kd.yaml",
        {s: SETTINGS[s] for s in settings},
        plan,
        out,
        students,
        protocol,
        jobs,
        threads,
        reuse,
        results,
        {"teacher": teacher, "report": report},
    )


def student_sizes(result: dict[str, Any]) -> str:
    """The students' trainable parameters and optimiser steps, with the arms of each size when the arms'
    students differ (e.g. a heterogeneous pair's): "13,726 parameters, 470 optimiser steps; ..."."""
    sizes: dict[tuple[int, int], list[str]] = {}
    for arm in result["arms"]:
        for m in list(result["runs"].get(arm, {}).values())[:1]:
            sizes.setdefault((int(m["params"]), int(m["steps"])), []).append(arm)
    texts = [f"{p:,} parameters, {n} optimiser steps" for p, n in sizes]
    if len(sizes) > 1:
        texts = [f"{t} ({', '.join(arms)})" for t, arms in zip(texts, sizes.values(), strict=True)]
    return "; ".join(texts)


def superseded(result: dict[str, Any]) -> list[str]:
    """The arms of a study result whose recorded override list differs from SETTINGS' (to be rerun)."""
    recorded = result.get("definitions", {})
    return [arm for arm in result["arms"] if arm in recorded and recorded[arm] != SETTINGS.get(arm)]


def current_runs(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without the runs of its superseded arms (for verdicts on today's arms)."""
    old = set(superseded(result))
    return {**result, "runs": {a: r for a, r in result["runs"].items() if a not in old}}


def format_table(result: dict[str, Any]) -> str:
    """The teacher and student sizes, then ``eakd.study.study_table`` of best and last top-1 against each
    arm's reference (REFERENCE), and the arms whose definition has changed since they ran."""
    teacher = result["teacher"]
    lines = [
        f"teacher: top-1 {teacher['last']['metrics']['top1']:.2f} % ({teacher['trainable_params']:,} "
        f"parameters); student: {student_sizes(result)}, {len(result['seeds'])} seeds",
        "",
        study_table(result, METRICS, REFERENCE, compare=["last_top1", "best_top1"]),
    ]
    old = superseded(result)
    if old:
        lines += [
            "",
            f"superseded (run with an earlier override list; the study reruns them): {', '.join(old)}",
        ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``eakd demo [--seeds 0 1 2] [--out DIR] [--jobs N] [-- key=value ...]``.

    The overrides (after ``--`` when they follow a list option) apply to every run, teacher included."""
    parser = ArgumentParser(
        prog="eakd demo",
        description="Fashion-MNIST: a small student alone, with KD and with EA-KD (configs demo/*). "
        "`eakd llm demo` and `eakd det demo` run the LLM and detection demos.",
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
    parser.add_argument("--student-epochs", type=int, help="students' epochs (default: demo/kd's)")
    parser.add_argument("--results", type=Path, help="also save the study there (e.g. results/NAME.json)")
    parser.add_argument(
        "--reuse", action="store_true", help="keep finished runs of an earlier study of the same protocol"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="config overrides for every run, teacher too (e.g. data.root=DIR); put them after --",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    epochs = [] if args.student_epochs is None else [f"train.epochs={args.student_epochs}"]
    result = demo_study(
        args.out,
        args.seeds,
        args.settings,
        args.overrides,
        epochs,
        args.jobs,
        args.threads,
        args.results,
        args.reuse,
    )
    dirs = [str(args.out / f"{s}-seed{seed}") for s in args.settings for seed in args.seeds]
    report_command(dirs)
    write_study_report(args.out)
    table = format_table(result)
    (args.out / "results.md").write_text(table + "\n")
    print(f"\n{table}\n\ntotal {time.perf_counter() - start:.0f} s; runs, plots and report.md in {args.out}")
    return 0
