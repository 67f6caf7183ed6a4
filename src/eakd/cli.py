"""The ``eakd`` command line: ``eakd COMMAND [args]``; each command lives in its own module.

A command is ``"module:function"``, imported only when used, where the function takes the remaining
arguments (list[str]) and returns an exit code.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("eakd.cli:info", "print the version, weight policies and registered losses"),
    "demo": ("eakd.vision.demo:main", "Fashion-MNIST no KD / KD / EA-KD table and plots; demo llm|det"),
    "llm": ("eakd.llm.cli:main", "LLM distillation: train CONFIG, eval MODEL, demo (needs the llm extra)"),
    "fetch": ("eakd.fetch:main", "fetch the offline data/model sources (fashion-mnist, smollm2, ...)"),
    "train": ("eakd.engine.trainer:train_command", "train or resume: eakd train CONFIG [key=value ...]"),
    "eval": ("eakd.engine.trainer:eval_command", "evaluate a run or config: eakd eval RUN_DIR|CONFIG"),
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
