"""The ``eakd`` command line: ``eakd COMMAND [args]``; each command lives in its own module.

A command is ``"module:function"``, imported only when used, where the function takes the remaining
arguments (list[str]) and returns an exit code. A user error (a bad config, name, value or file: the
``USER_ERRORS`` a command raises, or a bad command line) ends as one line on stderr, ``eakd COMMAND:
message``, and exit status 2; ``--debug`` anywhere on the command line (or ``EAKD_DEBUG=1``) shows the
traceback instead.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import yaml

from eakd.args import ArgumentParser, one_line

# what a command raises for a mistake of the user's (bad config, name, value, file, missing extra)
USER_ERRORS = (ValueError, TypeError, OSError, ImportError, yaml.YAMLError)
NESTED = ("llm", "det")  # commands with subcommands: errors name both words

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("eakd.cli:info", "print the version, weight policies and registered losses"),
    "demo": (
        "eakd.vision.demo:main",
        "Fashion-MNIST: no KD / KD / EA-KD table and plots (also: llm demo, det demo)",
    ),
    "llm": (
        "eakd.llm.cli:main",
        "LLM distillation: train CONFIG, study CONFIG, eval MODEL, demo (needs the llm extra)",
    ),
    "train": ("eakd.cli:train_command", "train or resume: eakd train CONFIG [key=value ...]"),
    "configs": (
        "eakd.cli:configs_command",
        "list, show, copy packaged configs: eakd configs [FILTER] | show NAME | copy NAME DEST",
    ),
    "eval": ("eakd.cli:eval_command", "evaluate a run or config: eakd eval RUN_DIR|CONFIG"),
    "report": (
        "eakd.report:report_command",
        "plots and report.md for runs or a study: eakd report RUN_DIR|STUDY_DIR ...",
    ),
    "study": (
        "eakd.study_cli:main",
        "does EA help on my data? arms x paired seeds of one config: eakd study CONFIG [--arm ...]",
    ),
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
    parser = ArgumentParser(prog="eakd train", description="Train (or resume) an experiment.")
    parser.add_argument("config", help="YAML config file, or a packaged config's name (eakd configs)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.01 train.resume=auto")
    parser.add_argument(
        "--deterministic", action="store_true", help="deterministic kernels (train.deterministic)"
    )
    args = parser.parse_args(argv)
    overrides = [*args.overrides, *(["train.deterministic=true"] if args.deterministic else [])]
    from eakd.engine import load_config, train

    train(load_config(args.config, overrides))
    return 0


def eval_command(argv: list[str]) -> int:
    """``eakd eval CONFIG|RUN_DIR [key=value ...] [--weights PATH]``: print the metrics as JSON."""
    parser = ArgumentParser(prog="eakd eval", description="Evaluate a trained run or a config.")
    parser.add_argument("target", help="a run folder (uses its config.yaml), a YAML config file or a name")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data")
    parser.add_argument(
        "--weights", help="weights file (default: the run's best.pt, else its latest checkpoint)"
    )
    args = parser.parse_args(argv)
    from eakd.engine import evaluate_run, latest_checkpoint, load_config

    target = Path(args.target)
    cfg = load_config(target / "config.yaml" if target.is_dir() else target, args.overrides)
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


def configs_command(argv: list[str]) -> int:
    """``eakd configs [FILTER]`` lists the packaged configs, ``eakd configs show NAME`` prints one with its
    base files merged in, ``eakd configs copy NAME DEST`` writes that as an editable file (never over one)."""
    from eakd.engine import catalog

    if argv and argv[0] in ("show", "copy"):
        parser = ArgumentParser(prog=f"eakd configs {argv[0]}", description=configs_command.__doc__)
        parser.add_argument("name", help="a packaged config's name (or a config file)")
        if argv[0] == "copy":
            parser.add_argument("dest", help="a new file (or a folder to write it into)")
        args = parser.parse_args(argv[1:])
        if argv[0] == "show":
            print(catalog.resolved_text(args.name), end="")
        else:
            print(f"wrote {catalog.copy_config(args.name, args.dest)}")
        return 0
    parser = ArgumentParser(
        prog="eakd configs",
        description="List the packaged configs (names for eakd train / eval / llm train). "
        "Also: eakd configs show NAME, eakd configs copy NAME DEST.",
    )
    parser.add_argument("filter", nargs="?", help="a substring of the names, or a glob (cifar100/*/res*)")
    args = parser.parse_args(argv)
    names = catalog.list_configs(args.filter)
    if not names:
        raise ValueError(f"no packaged config matches {args.filter!r} (`eakd configs` lists them all)")
    print("\n".join(names))
    return 0


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: eakd COMMAND [args ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in sorted(COMMANDS.items())]
    lines += ["", "Run `eakd COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default sys.argv[1:]) to a command; returns the exit code (2: a user error)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("EAKD_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        import eakd

        print(f"eakd {eakd.__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"eakd: unknown command {args[0]!r} (`eakd --help` lists the commands)", file=sys.stderr)
        return 2
    module, _, func = COMMANDS[args[0]][0].partition(":")
    try:
        return int(getattr(importlib.import_module(module), func)(args[1:]) or 0)
    except USER_ERRORS as err:
        if debug or (isinstance(err, ImportError) and (err.name or "").split(".")[0] == "eakd"):
            raise  # an import error inside eakd is a bug, not a missing extra
        sub = args[1] if args[0] in NESTED and len(args) > 1 and not args[1].startswith("-") else ""
        print(
            f"eakd {args[0]}{' ' + sub if sub else ''}: {one_line(err)} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"eakd {args[0]}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
