"""Studies over one engine config (``eakd study``, ``eakd demo``, benchmarks/fmnist_study.py): each arm an
override list of the config, every arm trained at the same seeds, compared paired by seed.

    arms = {"kd": ["distill.weighting=none"], "ea-kd": ["distill.weighting=ea"]}
    result = config_study("demo/kd", arms, [0, 1, 2], Path("runs/study"))

A run is ``eakd train CONFIG *common *arm`` with ``experiment.seed`` the seed, into ``out/<arm>-seed<seed>``
(its console output in ``out/logs/<arm>-seed<seed>.log``). Its metrics come from the engine's run summary
(``run_metrics``). ``eakd.study.run_study`` orders the runs seed-major, saves ``out/study.json`` after each
and keeps finished ones on resumption.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from eakd.args import one_line
from eakd.distill import DistillLoss
from eakd.engine.config import Config, load_config, to_dict
from eakd.engine.loop import train
from eakd.engine.task import Task
from eakd.study import run_study

# an arm name is a folder name part: letters, digits, . _ + - (not starting with . or -)
ARM_NAME = re.compile(r"[A-Za-z0-9][\w.+-]*")


def parse_arm(text: str) -> tuple[str, list[str]]:
    """``NAME`` or ``NAME=key=value,key=value,...`` -> (name, overrides). A comma splits only before a
    ``key=``, so values with commas stay whole (``distill.hparams={alpha: 1.0, beta: 8.0}``)."""
    name, sep, rest = text.partition("=")
    if not ARM_NAME.fullmatch(name):
        raise ValueError(f"arm name {name!r} must be letters, digits and . _ + - (from --arm {text!r})")
    overrides = [o.strip() for o in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", rest)] if sep else []
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"arm {name!r}: {override!r} is not of the form section.key=value")
    return name, overrides


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``0-9``, ``0,3,7`` or ``0-4,9`` (ranges inclusive, in the order given); ValueError on an
    empty list, a repeated seed, a negative one or a range that runs backwards."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None or (m[2] is not None and int(m[2]) < int(m[1])):
            raise ValueError(f"seeds {text!r}: {part!r} is not a seed (0) or a range (0-9) of seeds >= 0")
        seeds += range(int(m[1]), int(m[2] or m[1]) + 1)
    if not seeds:
        raise ValueError(f"seeds {text!r}: no seed given (e.g. --seeds 0-4)")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds {text!r}: seed(s) {repeated} given twice (each seed pairs the arms once)")
    return seeds


def default_arms(cfg: Config) -> dict[str, list[str]]:
    """The common question for ``cfg``'s method M: M unweighted, with EA (the config's tau and H_ub) and
    with ER (w = H_t at its published tau 4): {"M": [...], "ea-M": [...], "er-M": [...]}."""
    method = cfg.distill.method
    if method == "none":
        raise ValueError("the config distils nothing (distill.method: none): name the arms with --arm")
    return {
        method: ["distill.weighting=none"],
        f"ea-{method}": ["distill.weighting=ea"],
        f"er-{method}": ["distill.weighting=er", "distill.tau=null", "distill.h_ub=null"],
    }


def arm_configs(config: str | Path, arms: dict[str, list[str]], common: list[str]) -> dict[str, Config]:
    """Each arm's config, loaded and, for the classification task, its loss built (so a bad key, value or
    loss setting fails before any run, with the loader's message and its did-you-mean, prefixed by the arm;
    other tasks build their loss from the section their own way, e.g. detection takes its FPN term's
    ``feature_weight`` out of ``hparams``, and check it when a run starts). ValueError for an arm that
    sets an ``experiment.`` key (the study sets the seed, name and folder) or gives the same config as
    another arm."""
    configs: dict[str, Config] = {}
    for name, overrides in arms.items():
        fixed = [o for o in overrides if o.split("=", 1)[0].strip().startswith("experiment.")]
        if fixed:
            raise ValueError(
                f"arm {name!r} sets {fixed[0]!r}: the study sets experiment.* (seed, name) itself"
            )
        try:
            configs[name] = load_config(config, [*common, *overrides])
            if configs[name].task == "classification":
                DistillLoss.from_config(configs[name].distill, sync_checks=False)  # its loss settings, too
        except (ValueError, TypeError) as err:
            raise ValueError(f"arm {name!r}: {one_line(err)}") from None
        same = [a for a, c in configs.items() if a != name and to_dict(c) == to_dict(configs[name])]
        if same:
            given = [" ".join(arms[a]) or "no overrides" for a in (same[0], name)]
            raise ValueError(
                f"arms {same[0]!r} ({given[0]}) and {name!r} ({given[1]}) give the same config: a comparison "
                "needs them to differ; drop one"
            )
    return configs


def run_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """A run's study metrics from its summary (``eakd.engine.train``): ``last_<m>`` for every metric of the
    last evaluation (no selection), ``best_<metric>`` for the task's main metric at its best evaluation
    (selected on the eval set), ``train_s`` (training seconds), ``params`` (trainable) and ``steps``."""
    best = summary["best"]["value"]
    return {
        f"best_{summary['metric']}": float("nan") if best is None else float(best),
        **{f"last_{k}": float(v) for k, v in summary["last"]["metrics"].items()},
        "train_s": float(summary["train_time_s"]),
        "params": float(summary["trainable_params"]),
        "steps": float(summary["steps"]),
    }


def train_arm(
    arm: str,
    seed: int,
    config: str,
    arms: dict[str, list[str]],
    common: list[str],
    out: Path,
    metric: str | None = None,
    task: Callable[[Config], Task] | None = None,
) -> dict[str, float]:
    """One run of a study: ``config`` with ``common`` and ``arms[arm]``, at ``seed``, rebuilt from scratch
    in ``out/<arm>-seed<seed>`` (a stopped run is redone; the study keeps finished ones); its
    ``run_metrics``. metric: ValueError when the last evaluation lacks it. task: builds the task from the
    config (default: the config's task; e.g. evaluation on a validation split)."""
    name = f"{arm}-seed{seed}"
    where = [f"experiment.output_dir={out}", f"experiment.name={name}", f"experiment.seed={seed}"]
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        cfg = load_config(config, [*common, *arms[arm], *where, "train.overwrite=true"])
        summary = train(cfg, None if task is None else task(cfg))
    metrics = run_metrics(summary)
    if metric is not None and f"last_{metric}" not in metrics:
        known = ", ".join(k.removeprefix("last_") for k in metrics if k.startswith("last_")) or "none"
        raise ValueError(f"run {name} has no metric {metric!r} (its evaluation gives: {known}; see {log})")
    return metrics


def config_study(
    config: str | Path,
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
    task: Callable[[Config], Task] | None = None,
) -> dict[str, Any]:
    """Every arm x seed of ``config`` (``train_arm``) through ``eakd.study.run_study``: seed-major, saved to
    ``out/study.json`` (and ``results``) after each run, the arms' override lists stored as their
    definitions. seeds: for every arm, or arm -> its seeds. common: overrides of every run (before the
    arm's). protocol: what makes two studies the same (default: the config and ``common``); reuse: keep
    the finished runs of an earlier result of the same protocol for the arms whose list is unchanged.
    jobs, threads: runs at a time and torch threads each; info: more entries of the result."""
    common = list(common or [])
    train_one = partial(
        train_arm, config=str(config), arms=arms, common=common, out=out, metric=metric, task=task
    )
    if protocol is None:
        protocol = {"config": str(config), "overrides": common}
    return run_study(train_one, list(arms), seeds, out, protocol, jobs, threads, reuse, results, info, arms)
