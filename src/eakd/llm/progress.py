"""One progress bar with an ETA over a whole multi-phase job (``eakd llm demo``): teacher cache, warm start,
each run's training and evaluation.

The library's loops (and ``eakd.llm.callbacks.StepProgress`` for Trainer steps) report their work with
``note(kind, n)`` (n batches or steps of one ``KINDS`` kind); without an active bar that does nothing.
The job plans its work up front in the same units (``Progress(total, cost)``): each kind costs
``cost[kind]`` units (an estimate of its relative time), so the bar's rate, and so its ETA, holds across
phases; ``settle`` moves the bar to a planned mark when a phase ends (a phase may do less than planned,
e.g. no second test evaluation when the best step is the last).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from contextvars import ContextVar

from tqdm.auto import tqdm
from tqdm.contrib import DummyTqdmFile

# a teacher-cache batch (teacher forward), an optimiser step, a perplexity batch (student forward), an
# agreement batch (student and teacher forward), a generation batch (max_new_tokens decoding steps)
KINDS = ("cache", "train", "forward", "agreement", "generate")

_ACTIVE: ContextVar[Progress | None] = ContextVar("eakd_llm_progress", default=None)


class Progress:
    """A tqdm bar over ``total`` units; ``cost``: units per batch or step of each kind in ``KINDS``."""

    def __init__(self, total: float, cost: dict[str, float], desc: str = "") -> None:
        unknown = set(cost) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown progress kind(s) {sorted(unknown)}; known: {KINDS}")
        self.cost = cost
        self.bar = tqdm(
            total=round(total, 3), desc=desc, unit="u", dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
        )  # fmt: skip

    def note(self, kind: str, n: int = 1) -> None:
        """Advance by n batches or steps of ``kind`` (never past the end)."""
        step = self.cost.get(kind, 0.0) * n
        self.bar.update(min(step, max(self.bar.total - self.bar.n, 0)))

    def phase(self, name: str) -> None:
        """Show ``name`` as the bar's description."""
        self.bar.set_description_str(name)

    def settle(self, mark: float) -> None:
        """Move the bar to ``mark`` units (the planned end of a finished phase), forward only."""
        mark = min(mark, self.bar.total)
        if mark > self.bar.n:
            self.bar.update(mark - self.bar.n)

    def close(self) -> None:
        self.settle(self.bar.total)
        self.bar.close()


@contextmanager
def active(progress: Progress) -> Iterator[Progress]:
    """Make ``progress`` the bar that ``note`` and ``phase`` report to, within this context; what is printed
    meanwhile goes above the bar (``tqdm.write``)."""
    token = _ACTIVE.set(progress)
    try:
        with redirect_stdout(DummyTqdmFile(sys.stdout)):
            yield progress
    finally:
        _ACTIVE.reset(token)
        progress.close()


def current() -> Progress | None:
    """The active bar, or None."""
    return _ACTIVE.get()


def note(kind: str, n: int = 1) -> None:
    """Report n batches or steps of ``kind`` to the active bar (nothing without one)."""
    bar = _ACTIVE.get()
    if bar is not None:
        bar.note(kind, n)


def phase(name: str) -> None:
    """Name the current phase on the active bar (nothing without one)."""
    bar = _ACTIVE.get()
    if bar is not None:
        bar.phase(name)
