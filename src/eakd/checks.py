"""Input checks shared by weights and losses: clear errors instead of silent broadcasts."""

from __future__ import annotations

import math

import torch


def check_positive(name: str, value: float) -> None:
    """Raise ValueError unless ``value`` > 0 (temperatures, tau, h_ub)."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise ValueError if ``x`` holds NaN or inf, saying how many; returns ``x`` otherwise.

    Losses and weights call it on their per-sample results (N,), not on the (N, K) logits: a NaN or inf
    logit makes its row's result non-finite, so the check costs O(N), not another pass over the logits.
    """
    # one reduction and one read-back: a NaN or inf anywhere makes the (float32-accumulated) sum non-finite
    if not math.isfinite(float(x.detach().sum(dtype=torch.float32))):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf) of {x.numel()}")
    return x


def check_logit_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Student and teacher logits must have the same shape (..., K); names the sizes otherwise.

    Shapes only: finiteness is checked on the results (see ``check_finite``).
    """
    if student_logits.dim() < 1:
        raise ValueError("logits must have a class dimension, got a scalar")
    ks, kt = student_logits.shape[-1], teacher_logits.shape[-1]
    if ks != kt:
        raise ValueError(
            f"student and teacher logits differ in their last (class/vocabulary) dimension: "
            f"student has {ks}, teacher has {kt}"
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )


def check_same_leading(name: str, x: torch.Tensor, values: torch.Tensor) -> None:
    """``x`` (weights or mask) must have exactly the shape of the per-sample ``values``."""
    if x.shape != values.shape:
        raise ValueError(
            f"{name} shape {tuple(x.shape)} does not match the per-sample loss shape {tuple(values.shape)}; "
            f"a per-sample {name} must meet a per-sample loss (no broadcasting)"
        )
