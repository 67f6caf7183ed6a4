"""``eakd study CONFIG``: does a weighting (EA, ER, yours) help on my model and data, beyond seed noise?

    eakd study my.yaml                                   # M, ea-M, er-M over seeds 0-4 (M: the method)
    eakd study my.yaml --arm kd=distill.weighting=none --arm ea=distill.weighting=ea,distill.tau=2 \\
        --seeds 0-9 --reference kd --effect 0.5 --out runs/my_study

Each arm is an override list of CONFIG (``eakd.config_study``); every arm runs at every seed, seed-major,
and the study folder is saved after every run: the runs, ``study.json`` (the layout of results/*.json),
``report.md`` (per-arm mean ± std; each arm minus the reference paired by seed with its 95 % interval, a
verdict and, with ``--effect``, the seeds needed) and ``differences.png``. ``--resume`` continues a stopped
study, keeping its finished runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from eakd.args import ArgumentParser
from eakd.config_study import ENGINE, StudyKind, arm_configs, parse_arm, parse_seeds
from eakd.study import changed_arms
from eakd.study_report import write_study_report


def study_protocol(config: str, overrides: list[str], kind: StudyKind = ENGINE) -> dict[str, Any]:
    """What makes two command studies the same study: the resolved config with ``overrides`` as
    ``kind.settings`` gives it (for engine configs without its experiment section: the study sets name,
    folder and seed)."""
    return {"config": kind.settings(kind.load(config, overrides))}


def _differing(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested mappings."""
    keys = []
    for k in dict.fromkeys([*a, *b]):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _differing(x, y, f"{prefix}{k}.")
        elif x != y:
            keys.append(f"{prefix}{k}")
    return keys


def check_folder(out: Path, protocol: dict[str, Any], arms: dict[str, list[str]], resume: bool) -> None:
    """Refuse, before anything is written, a study folder that holds something else: files but no study,
    a study without ``resume``, another study (another config), or runs of an arm defined otherwise."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the study")
    study = out / "study.json"
    if not study.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise ValueError(f"{out} holds files but no study (study.json): give a new or empty --out")
        return
    if not resume:
        raise ValueError(f"{out} holds a study already: continue it with --resume, or give another --out")
    before = json.loads(study.read_text())
    if before.get("protocol") != protocol:
        keys = _differing(before.get("protocol", {}).get("config", {}), protocol["config"])
        what = f"config differs in {', '.join(keys[:5])}" if keys else "another protocol"
        raise ValueError(f"{out} holds another study ({what}): give another --out, or --resume it unchanged")
    changed = changed_arms(before, arms)
    if changed:
        arm = changed[0]
        raise ValueError(
            f"arm {arm!r} ran as {before['definitions'].get(arm)} in {study}, now {arms[arm]}: keep its "
            "definition or give the new one another name (runs of two definitions are never mixed)"
        )


def main(argv: list[str], kind: StudyKind = ENGINE) -> int:
    """``eakd study CONFIG [key=value ...] [--arm NAME[=key=value,...]] ... [--seeds 0-4] [--reference ARM]
    [--metric NAME] [--effect E] [--out DIR] [--jobs N] [--threads N] [--resume]``; the same for another
    ``kind`` of config (``eakd llm study``: ``eakd.llm.config_study.LLM``)."""
    parser = ArgumentParser(prog=kind.prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config file, or a packaged config's name (eakd configs)")
    parser.add_argument("overrides", nargs="*", help="overrides for every arm, e.g. train.epochs=5")
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME[=key=value,...]",
        help="an arm: a name and its overrides of CONFIG (repeat; default: M, ea-M, er-M for its method M)",
    )
    parser.add_argument("--seeds", default="0-4", help="paired seeds: 0-9, 0,3,7 or 0-4,9 (default 0-4)")
    parser.add_argument("--reference", help="the arm the others are compared with (default: the first)")
    parser.add_argument(
        "--metric", help="an evaluation metric (default: the task's main one, e.g. top1, AP or rougeL)"
    )
    parser.add_argument(
        "--effect", type=float, help="a difference worth finding (metric units): report the seeds it needs"
    )
    parser.add_argument("--out", type=Path, help="study folder (default runs/study-<config name>)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--resume", action="store_true", help="continue the study in --out (keeps its runs)")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    seeds = parse_seeds(args.seeds)
    if args.effect is not None and not args.effect > 0:
        raise ValueError(f"--effect must be > 0 (a difference in the metric's units), got {args.effect}")
    if args.jobs < 1 or args.threads < 1:
        raise ValueError(f"--jobs and --threads must be >= 1, got {args.jobs} and {args.threads}")
    arms: dict[str, list[str]] = {}
    for text in args.arm:
        name, overrides = parse_arm(text)
        if name in arms:
            raise ValueError(f"arm {name!r} is given twice; name each arm once")
        arms[name] = overrides
    if not arms:
        arms = kind.default_arms(kind.load(args.config, args.overrides))
    reference = args.reference or next(iter(arms))
    if reference not in arms:
        raise ValueError(f"--reference {reference!r} is not an arm; the arms: {', '.join(arms)}")
    if len(arms) < 2:
        raise ValueError("a study compares arms: give at least two --arm")
    arm_configs(args.config, arms, args.overrides, kind)
    protocol = study_protocol(args.config, args.overrides, kind)
    out = args.out or Path("runs") / f"study-{Path(args.config).stem}"
    check_folder(out, protocol, arms, args.resume)
    torch.set_num_threads(args.threads)
    report = {"metric": args.metric, "reference": reference, "effect": args.effect}
    print(f"study of {args.config}: arms {', '.join(arms)}; seeds {seeds}; folder {out}", flush=True)
    kind.study(
        args.config,
        arms,
        seeds,
        out,
        args.overrides,
        protocol,
        args.jobs,
        args.threads,
        reuse=args.resume,
        info={"report": report},
        metric=args.metric,
    )
    path = write_study_report(out)
    print(f"\n{path.read_text()}\nreport, plot, runs and study.json in {out}")
    return 0
