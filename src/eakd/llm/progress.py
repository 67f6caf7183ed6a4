"""Progress hooks of the LLM runners: the library reports its work through a hook, a front end shows it.

The loops of ``eakd.llm`` (teacher-cache batches, Trainer steps through
``eakd.llm.callbacks.StepProgress``, evaluation batches) and the runners (``run``, ``warm_start_student``,
``llm_study``) take a ``ProgressHook`` argument (default ``QUIET``, which does nothing) and call
``note(kind, n)`` after n batches or steps of a ``KINDS`` kind, and ``phase(name)`` when a phase begins.
No library function holds a bar. ``Bar`` is the front ends' hook (``eakd llm demo``, ``eakd llm cache``):
a tqdm bar over planned counts per kind, whose ETA comes from the rates it measures (seconds per unit of
each kind, so that phases of different speed mix), not from a table of one machine's timings.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, redirect_stdout
from time import perf_counter
from typing import Protocol

from tqdm.auto import tqdm
from tqdm.contrib import DummyTqdmFile

# a teacher-cache batch (teacher forward), an optimiser step, a perplexity batch (student forward), an
# agreement batch (student and teacher forward), a generation batch (max_new_tokens decoding steps)
KINDS = ("cache", "train", "forward", "agreement", "generate")


class ProgressHook(Protocol):
    """What the runners report to: work done, and the phase it belongs to."""

    def note(self, kind: str, n: int = 1) -> None:
        """n batches or steps of ``kind`` (one of ``KINDS``) are done."""
        ...

    def phase(self, name: str) -> None:
        """A phase named ``name`` begins."""
        ...


class Quiet:
    """The hook that reports nothing (the runners' default)."""

    def note(self, kind: str, n: int = 1) -> None:
        pass

    def phase(self, name: str) -> None:
        pass


QUIET = Quiet()


class Bar:
    """A tqdm bar (a ``ProgressHook``) over ``plan``, the planned batches or steps of each kind ({} for
    a bar that counts units without a plan). Its fill and ETA are in estimated seconds: each kind's rate is
    measured as its units arrive (the time since the previous note or phase start), a kind not seen yet
    takes the mean rate of those seen. Work planned but not done (a skipped evaluation) stays in the ETA
    until ``close``. While the bar is open, what is printed goes above it (``tqdm.write``)."""

    def __init__(self, plan: dict[str, int], desc: str = "") -> None:
        unknown = set(plan) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown progress kind(s) {sorted(unknown)}; known: {KINDS}")
        self.plan = {k: v for k, v in plan.items() if v > 0}
        self.done = dict.fromkeys(KINDS, 0)
        self.seconds = dict.fromkeys(KINDS, 0.0)
        self.last = perf_counter()
        self.stdout = ExitStack()
        self.stdout.enter_context(redirect_stdout(DummyTqdmFile(sys.stdout)))
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}" if self.plan else None
        total = 1.0 if self.plan else None
        # shown after a second only: a command that fails at once prints its one-line error and no bar
        self.bar = tqdm(total=total, desc=desc, unit="", dynamic_ncols=True, bar_format=fmt, delay=1.0)

    def note(self, kind: str, n: int = 1) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown progress kind {kind!r}; known: {KINDS}")
        now = perf_counter()
        self.seconds[kind] += now - self.last
        self.done[kind] += n
        self.last = now
        if not self.plan:
            self.bar.update(n)
            return
        spent, left = self.estimate()
        self.bar.n = spent / (spent + left) if spent + left > 0 else 0.0
        self.bar.set_postfix_str("" if left == 0 else f"ETA {tqdm.format_interval(left)}", refresh=False)
        self.bar.refresh()

    def estimate(self) -> tuple[float, float]:
        """(seconds spent on the noted units, seconds estimated for the planned units left)."""
        units, spent = sum(self.done.values()), sum(self.seconds.values())
        mean = spent / units if units else 0.0
        rate = {k: self.seconds[k] / self.done[k] if self.done[k] else mean for k in KINDS}
        left = sum(max(n - self.done[k], 0) * rate[k] for k, n in self.plan.items())
        return spent, left

    def phase(self, name: str) -> None:
        self.bar.set_description_str(name)
        self.last = perf_counter()  # the time between phases (loading models) counts to no kind

    def close(self) -> None:
        """Fill the bar, close it, and print normally again."""
        if self.plan:
            self.bar.n = 1.0
            self.bar.set_postfix_str("")
        self.bar.close()
        self.stdout.close()
