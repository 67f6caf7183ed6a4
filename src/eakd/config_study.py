"""Studies over one config (``eakd study``, ``eakd demo``, benchmarks/fmnist_study.py; LLM run configs
through ``eakd.llm.config_study``): each arm an override list of the config, every arm trained at the same
seeds, compared paired by seed.

    arms = {"kd": ["distill.weighting=none"], "ea-kd": ["distill.weighting=ea"]}
    result = config_study("demo/kd", arms, [0, 1, 2], Path("runs/study"))

A run is ``run_one(CONFIG, [*common, *arm], seed, out/<arm>-seed<seed>)`` (its console output in
``out/logs/<arm>-seed<seed>.log``): for engine configs ``eakd train CONFIG *common *arm`` with
``experiment.seed`` the seed (``train_engine``), its metrics from the engine's run summary
(``run_metrics``). ``eakd.study.run_study`` orders the runs seed-major, saves ``out/study.json`` after each
and keeps finished ones on resumption.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from eakd.args import one_line
from eakd.distill import DistillLoss
from eakd.engine.config import Config, load_config, to_dict
from eakd.engine.loop import train
from eakd.engine.task import Task
from eakd.study import run_study

# one run: (config, overrides, seed, folder) -> its flat metrics (``train_arm``, ``config_study``)
RunOne = Callable[[Any, list[str], int, Path], dict[str, float]]

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


class StudyKind(NamedTuple):
    """What the study machinery needs of one kind of config: ``ENGINE`` (engine configs, ``eakd study``) or
    ``eakd.llm.config_study.LLM`` (LLM run configs, ``eakd llm study``). Every field is a module-level
    function (or a partial of one), so that runs can be spawned (``jobs > 1``).

    prog: the command, for its messages. load(config, overrides): the config, checked (a ValueError or
    TypeError naming the bad key, value or loss setting). settings(cfg): what defines its runs but their
    seed and folder, as plain data (a command study's protocol; two arms must differ in it). fixed: the
    override keys the study sets itself, which an arm may not (one ending in "." stands for its section).
    default_arms(cfg): the arms of the common question (``default_arms``). study: the study function of
    this kind, with ``config_study``'s signature."""

    prog: str
    load: Callable[[str | Path | None, list[str]], Any]
    settings: Callable[[Any], dict[str, Any]]
    fixed: tuple[str, ...]
    default_arms: Callable[[Any], dict[str, list[str]]]
    study: Callable[..., dict[str, Any]]


def _within(key: str, fixed: str) -> bool:
    """Whether the dotted ``key`` is ``fixed`` or, for a ``fixed`` ending in ".", a key of that section."""
    return key.startswith(fixed) if fixed.endswith(".") else key == fixed


def arm_configs(
    config: str | Path | None, arms: dict[str, list[str]], common: list[str], kind: StudyKind | None = None
) -> dict[str, Any]:
    """Each arm's config, loaded and checked by ``kind.load`` (default ``ENGINE``: ``load_checked``), so a
    bad key, value or loss setting fails before any run, with the loader's message and its
    did-you-mean, prefixed by the arm. ValueError for an arm that sets a key the study sets itself
    (``kind.fixed``: for engine configs ``experiment.*``, the seed, name and folder) or gives the same
    settings as another arm."""
    kind = kind or ENGINE
    configs: dict[str, Any] = {}
    settings: dict[str, dict[str, Any]] = {}
    for name, overrides in arms.items():
        keys = [o.split("=", 1)[0].strip() for o in overrides]
        fixed = [o for o, k in zip(overrides, keys, strict=True) if any(_within(k, f) for f in kind.fixed)]
        if fixed:
            keys = ", ".join(k + "*" if k.endswith(".") else k for k in kind.fixed)
            raise ValueError(f"arm {name!r} sets {fixed[0]!r}: the study sets {keys} itself")
        try:
            configs[name] = kind.load(config, [*common, *overrides])
        except (ValueError, TypeError) as err:
            raise ValueError(f"arm {name!r}: {one_line(err)}") from None
        settings[name] = kind.settings(configs[name])
        same = [a for a in configs if a != name and settings[a] == settings[name]]
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


def load_checked(config: str | Path | None, overrides: list[str]) -> Config:
    """An engine config with ``overrides`` (``ENGINE.load``), for the classification task with its loss
    built once (other tasks build their loss from the section their own way, e.g. detection takes its
    FPN term's ``feature_weight`` out of ``hparams``, and check it when a run starts)."""
    cfg = load_config(config, overrides)
    if cfg.task == "classification":
        DistillLoss.from_config(cfg.distill, sync_checks=False)
    return cfg


def engine_settings(cfg: Config) -> dict[str, Any]:
    """The resolved config without its experiment section (the study sets name, folder and seed)."""
    settings = to_dict(cfg)
    del settings["experiment"]
    return settings


def train_engine(
    config: str | Path | None, overrides: list[str], seed: int, folder: Path,
    task: Callable[[Config], Task] | None = None,
) -> dict[str, float]:  # fmt: skip
    """One engine run (``ENGINE.run_one``): ``eakd train CONFIG *overrides`` at ``experiment.seed`` seed,
    rebuilt from scratch in ``folder``; its ``run_metrics``. task: builds the task from the config
    (default: the config's task; e.g. evaluation on a validation split)."""
    where = [f"experiment.output_dir={folder.parent}", f"experiment.name={folder.name}"]
    cfg = load_config(config, [*overrides, *where, f"experiment.seed={seed}", "train.overwrite=true"])
    return run_metrics(train(cfg, None if task is None else task(cfg)))


def train_arm(
    arm: str,
    seed: int,
    config: str | Path | None,
    arms: dict[str, list[str]],
    common: list[str],
    out: Path,
    metric: str | None = None,
    run_one: RunOne | None = None,
) -> dict[str, float]:
    """One run of a study: ``config`` with ``common`` and ``arms[arm]``, at ``seed``, by ``run_one``
    (default ``train_engine``) in ``out/<arm>-seed<seed>`` (a stopped run is redone; the study keeps
    finished ones), its console output in ``out/logs/<arm>-seed<seed>.log``; its metrics. metric:
    ValueError when the run has no ``last_<metric>``."""
    name = f"{arm}-seed{seed}"
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        metrics = (run_one or train_engine)(config, [*common, *arms[arm]], seed, out / name)
    if metric is not None and f"last_{metric}" not in metrics:
        known = ", ".join(k.removeprefix("last_") for k in metrics if k.startswith("last_")) or "none"
        raise ValueError(f"run {name} has no metric {metric!r} (its evaluation gives: {known}; see {log})")
    return metrics


def config_study(
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
    task: Callable[[Config], Task] | None = None,
    run_one: RunOne | None = None,
    extra: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Every arm x seed of ``config`` (``train_arm``) through ``eakd.study.run_study``: seed-major, saved to
    ``out/study.json`` (and ``results``) after each run, the arms' override lists stored as their
    definitions. seeds: for every arm, or arm -> its seeds. common: overrides of every run (before the
    arm's). protocol: what makes two studies the same (default: the config and ``common``); reuse: keep
    the finished runs of an earlier result of the same protocol for the arms whose list is unchanged.
    jobs, threads: runs at a time and torch threads each; info: more entries of the result. run_one: the
    runner (default ``train_engine``, with ``task``: builds the task from the config); extra: arm -> more
    overrides of its runs that are not its definition (e.g. where an LLM arm reads its teacher cache)."""
    common = list(common or [])
    if run_one is None and task is not None:
        run_one = partial(train_engine, task=task)
    run_arms = {a: [*o, *(extra or {}).get(a, [])] for a, o in arms.items()}
    train_one = partial(
        train_arm, config=config, arms=run_arms, common=common, out=out, metric=metric, run_one=run_one
    )
    if protocol is None:
        protocol = {"config": str(config), "overrides": common}
    return run_study(train_one, list(arms), seeds, out, protocol, jobs, threads, reuse, results, info, arms)


# engine configs: ``eakd study``
ENGINE = StudyKind("eakd study", load_checked, engine_settings, ("experiment.",), default_arms, config_study)
