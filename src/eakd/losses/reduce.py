"""Reduction of per-sample losses, kept apart from the losses themselves."""

from __future__ import annotations

import torch

from eakd.checks import (
    check_positive,
    check_positive_values,
    check_same_leading,
    check_tensor,
    check_weight_values,
)


def weighted_mean(
    values: torch.Tensor,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    denominator: float | torch.Tensor | None = None,
    *,
    defer: bool = False,
) -> torch.Tensor:
    """mean_n(w_n * values_n) over valid positions; returns a 0-dim tensor in values' dtype.

    values: per-sample (N,) / per-token (B, T) / per-RoI (R,) losses, a tensor. weights, mask: tensors of
    exactly the shape of ``values`` (an error otherwise: no broadcasting; TypeError for lists); weights
    finite and >= 0 (``eakd.checks.check_weight_values``: a ValueError, or with ``defer`` NaN, so the result
    is non-finite and the caller's device-side check stops). The weights are not normalised (EA-KD's rule):
    the result is sum(w * v * mask) / count, count = number of valid positions, or ``denominator`` when
    given (e.g. the number of valid tokens over all gradient-accumulation micro-batches): a finite number
    > 0, or a tensor of one element > 0 (one host read; with ``defer`` none, and a count <= 0 makes the
    result NaN for the caller's device-side check: ``eakd.checks``). With no
    valid position (an all-False mask) and no denominator the result is 0.
    """
    check_tensor("values", values)
    if weights is not None:
        check_same_leading("weights", weights, values)
        w = check_weight_values("weights", weights.detach(), defer=defer)
        values = values * w.to(values.dtype)
    if mask is not None:
        check_same_leading("mask", mask, values)
        m = mask.to(torch.bool)
        total = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
        count = m.sum()
    else:
        total = values.sum()
        count = values.numel()
    if isinstance(denominator, torch.Tensor):
        if denominator.numel() != 1:
            raise ValueError(f"denominator must hold one value, got shape {tuple(denominator.shape)}")
        den = denominator.reshape(()).to(torch.promote_types(total.dtype, torch.float32))
        return (total / check_positive_values("denominator", den, defer=defer)).to(total.dtype)
    if denominator is not None:
        check_positive("denominator", denominator)
        return total / denominator
    if isinstance(count, torch.Tensor):
        return total / count.clamp_min(1).to(total.dtype)
    return total / max(count, 1)
