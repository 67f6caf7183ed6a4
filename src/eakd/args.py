"""Command-line parsing whose user errors are one line: ``eakd CMD: error: ... (eakd CMD --help)``."""

from __future__ import annotations

import argparse
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that reports a bad command line in one stderr line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def one_line(err: BaseException) -> str:
    """An exception's message on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(err).split()) or type(err).__name__


