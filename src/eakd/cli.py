"""The ``eakd`` command line: ``eakd COMMAND [args]``; each command lives in its own module.

A command is ``"module:function"``, imported only when used, where the function takes the remaining
arguments (list[str]) and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("eakd.cli:info", "print the version, weight policies and registered losses"),
    "demo": (
        "eakd.vision.demo:main",
        "Fashion-MNIST: no KD / KD / EA-KD table and plots (also: llm demo, det demo)",
    ),
    "llm": ("eakd.llm.cli:main", "LLM distillation: train CONFIG, eval MODEL, demo (needs the llm extra)"),
    "train": ("eakd.cli:train_command", "train or resume: eakd train CONFIG [key=value ...]"),
    "eval": ("eakd.cli:eval_command", "evaluate a run or config: eakd eval RUN_DIR|CONFIG"),
    "report": ("eakd.report:report_command", "plots and report.md for runs: eakd report RUN_DIR ..."),
    "det": ("eakd.detection.demo:main", "detection demo on real tree images: eakd det demo [--seeds 0 1 2]"),
}


def info(argv: list[str]) -> int:
    """Print the version, the weight policies and the registered distillation losses."""
    import eakd

    print(f"eakd {eakd.__version__}")
    print("weight policies:", ", ".join(sorted([*eakd.POLICIES, "none"])))
    print("losses:", ", ".join(sorted(eakd.losses.LOSSES)))
    return 0


def train_command(argv: list[str]) -> int:
    """``eakd train CONFIG [key=value ...] [--deterministic]``."""
    parser = argparse.ArgumentParser(prog="eakd train", description="Train (or resume) an experiment.")
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.01 train.resume=auto")
    parser.add_argument(
        "--deterministic", action="store_true", help="deterministic kernels (train.deterministic)"
    )
    args = parser.parse_args(argv)
    overrides = [*args.overrides, *(["train.deterministic=true"] if args.deterministic else [])]
    from eakd.engine import ConfigError, load_config, train

    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"eakd train: {err}", file=sys.stderr)
        return 2
    train(cfg)
    return 0


def eval_command(argv: list[str]) -> int:
    """``eakd eval CONFIG|RUN_DIR [key=value ...] [--weights PATH]``: print the metrics as JSON."""
    parser = argparse.ArgumentParser(prog="eakd eval", description="Evaluate a trained run or a config.")
    parser.add_argument("target", help="a run folder (uses its config.yaml) or a YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data")
    parser.add_argument(
        "--weights", help="weights file (default: the run's best.pt, else its latest checkpoint)"
    )
    args = parser.parse_args(argv)
    from eakd.engine import ConfigError, evaluate_run, latest_checkpoint, load_config

    target = Path(args.target)
    try:
        cfg = load_config(target / "config.yaml" if target.is_dir() else target, args.overrides)
    except ConfigError as err:
        print(f"eakd eval: {err}", file=sys.stderr)
        return 2
    run_dir = target if target.is_dir() else cfg.run_dir
    weights = args.weights
    if weights is None:
        best = run_dir / "best.pt"
        weights = best if best.is_file() else latest_checkpoint(run_dir)
    if weights is None:
        print(f"eakd eval: no weights found in {run_dir}; evaluating the untrained model", file=sys.stderr)
    metrics = evaluate_run(cfg, weights)
    print(json.dumps({"weights": None if weights is None else str(weights), **metrics}, indent=2))
    return 0


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: eakd COMMAND [args ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in sorted(COMMANDS.items())]
    lines += ["", "Run `eakd COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default sys.argv[1:]) to a command; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        return info([])
    if args[0] not in COMMANDS:
        print(f"eakd: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, _, func = COMMANDS[args[0]][0].partition(":")
    return int(getattr(importlib.import_module(module), func)(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
