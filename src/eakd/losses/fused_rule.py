"""When a loss takes the compiled single pass (``eakd.losses.fused``): the ``fused`` setting's rule.

``fused`` is True (always the compiled pass; settings without one are refused when built), False (always
eager) or "auto", the default of ``DistillLoss``, the engine's ``distill.fused`` and the LLM's
``TokenLossSettings``: the compiled pass where it is faster, i.e. for settings that have one, on logits
past the crossover ``AUTO_MIN_NUMEL`` measured by ``benchmarks/loss_overhead.py --crossover``, and when
torch.compile works here; else eager (the same values and gradients).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch

Tensor = torch.Tensor

Fused = bool | Literal["auto"]  # the ``fused`` setting: force the compiled pass, force eager, or choose
# logits of at least this many elements (N * K per call or chunk) take the compiled pass under "auto":
# below it the compiled kernel's fixed cost loses to eager (benchmarks/loss_overhead.py --crossover)
AUTO_MIN_NUMEL = 2**16


def check_fused(fused: Any) -> None:
    """``fused`` must be True, False or "auto" (ValueError otherwise)."""
    if not (fused is True or fused is False or fused == "auto"):
        raise ValueError(f"fused must be true, false or 'auto', got {fused!r}")


def _probe(x: Tensor) -> Tensor:
    return (x - x.amax()).exp().sum()


@functools.cache
def compile_works() -> bool:
    """Whether torch.compile builds and runs a small kernel here (tried once per process; a missing C
    compiler or an unsupported platform makes it False)."""
    try:
        torch.compile(_probe, dynamic=True)(torch.ones(8))
    except Exception:  # any failure of the compiler stack means: stay eager
        return False
    return True


def use_fused(fused: Fused, fusable: bool, numel: int) -> bool:
    """Whether a call takes the compiled single pass. True / False force it (True needs fusable settings,
    refused when they are built); "auto": when the settings are ``fusable``, the logits hold at least
    ``AUTO_MIN_NUMEL`` elements and ``compile_works()``, else the eager path (the same values)."""
    if fused != "auto":
        return bool(fused)
    return fusable and numel >= AUTO_MIN_NUMEL and compile_works()
