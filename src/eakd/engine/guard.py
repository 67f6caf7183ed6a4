"""The non-finite guard of both runners (the engine's epoch loop and ``EAKDTrainer``): per named flag, the
first optimiser step at which it was set, kept as device tensors updated with torch ops (no host read per
step), read back once at the logging steps, before every checkpoint and at the end. The runner then
stops with ``NonFiniteLossError`` (a term went NaN or inf) or ``InvalidBatchError`` (an input check the
loss deferred to the device failed), before anything from that step is logged or saved."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

NEVER = 2**62  # the step recorded for a flag that was never set


class NonFiniteLossError(ValueError):
    """A run stopped by its guard: a loss term went NaN or inf; nothing after that step was saved."""


class InvalidBatchError(NonFiniteLossError):
    """A run stopped by its guard: a training batch failed a check the loss deferred to the device."""


class FirstBadStep:
    """Per flag name, the first optimiser step at which the flag was set (0-dim int64 on the device)."""

    def __init__(self) -> None:
        self.first: dict[str, Tensor] = {}

    def update(self, flags: dict[str, Tensor], step: int) -> None:
        """Record ``step`` for each 0-dim bool flag that is set now and was not before (no host read)."""
        for name, flag in flags.items():
            first = self.first.get(name)
            if first is None:
                first = torch.full((), NEVER, dtype=torch.int64, device=flag.device)
            self.first[name] = torch.where(flag.to(first.device) & (first == NEVER), step, first)

    def read(self, reduce_min: Callable[[Tensor], Tensor] = lambda t: t) -> tuple[int, list[str]] | None:
        """(the first step, the names set at it) over all processes, or None when no flag was ever set:
        one host read. reduce_min: the elementwise minimum of a (names,) tensor over the processes."""
        if not self.first:
            return None
        names = sorted(self.first)
        steps = reduce_min(torch.stack([self.first[k] for k in names])).tolist()
        step = min(steps)
        if step == NEVER:
            return None
        return step, [name for name, s in zip(names, steps, strict=True) if s == step]
