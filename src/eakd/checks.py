"""Input checks shared by weights and losses: clear errors instead of silent broadcasts or silent NaNs.

Shape, device and setting checks look at metadata only. Value checks (``check_finite``,
``check_positive_values``, ``check_flag``) read one value back to the host: eager by default, so a direct
call fails at once. With ``defer=True``, an explicit argument that training paths pass down (never an
ambient switch), they do no host sync and raise nothing; the caller then checks its results on the
device (``DistillLoss(sync_checks=False)`` and ``EAKDTrainer`` record flags a training loop reads at its
logging steps, ``eakd.engine.guard``).
"""

from __future__ import annotations

import math
from numbers import Real

import torch


def nonfinite(x: torch.Tensor) -> torch.Tensor:
    """0-dim bool tensor on x's device: True if ``x`` holds a NaN or inf. One O(numel) pass, no sync."""
    return ~torch.isfinite(x.detach()).all()


def check_positive(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite real number > 0 (temperatures, tau, h_ub, denominators)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be > 0 and finite, got {value}")


def check_nonnegative(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite real number >= 0 (outer loss weights, warm-up lengths)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


def check_tensor(name: str, x: object) -> torch.Tensor:
    """``x`` itself when it is a tensor (TypeError naming ``name`` otherwise: a list is not broadcast)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _eager_values(name: str, x: torch.Tensor, defer: bool) -> bool:
    """Whether a value check reads ``x`` now (not ``defer``); a meta tensor holds no value to read."""
    if defer:
        return False
    if x.is_meta:
        raise ValueError(f"{name}: the inputs are on the meta device, which holds no values (use cpu/cuda)")
    return True


def check_weight_values(name: str, w: torch.Tensor, *, defer: bool = False) -> torch.Tensor:
    """Weights (...) must be finite and >= 0 everywhere; returns them. Eager: ValueError saying how many are
    not (one host read). With ``defer``: no sync; bad values become NaN, so the loss they weight is
    non-finite and the caller's device-side check stops the run (as ``check_positive_values``)."""
    ok = (w >= 0) & torch.isfinite(w)
    if not _eager_values(name, w, defer):
        return torch.where(ok, w, torch.full_like(w, math.nan))
    if not bool(ok.all()):
        raise ValueError(f"{name} must be finite and >= 0; {int((~ok).sum())} of {w.numel()} are not")
    return w


def check_positive_values(name: str, x: torch.Tensor, *, defer: bool = False) -> torch.Tensor:
    """A float tensor setting (a learned temperature, a token count) that must be finite and > 0 everywhere;
    returns it. Eager: ValueError otherwise. With ``defer``: no sync; bad values become NaN, so whatever is
    computed from them is non-finite and the caller's device-side check reports it.
    """
    ok = (x > 0) & torch.isfinite(x)
    if not _eager_values(name, x, defer):
        return torch.where(ok, x, torch.full_like(x, math.nan))
    if not bool(ok.all()):
        raise ValueError(f"{name} must be > 0 and finite everywhere; {int((~ok).sum())} value(s) are not")
    return x


def check_finite(name: str, x: torch.Tensor, *, defer: bool = False) -> torch.Tensor:
    """Raise ValueError if ``x`` holds NaN or inf, saying how many; returns ``x`` (unchecked with ``defer``).

    Losses and weights call it on their per-sample results (N,), not on the (N, K) logits: a NaN or inf
    logit makes its row's result non-finite, so the check costs O(N), not another pass over the logits.
    """
    if _eager_values(name, x, defer) and bool(nonfinite(x)):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf) of {x.numel()}")
    return x


def check_flag(message: str, bad: torch.Tensor, *, defer: bool = False) -> torch.Tensor:
    """``bad`` (0-dim bool) says an input value is invalid: eager, ValueError(message) when True (one host
    read); with ``defer``, no sync and no error: returns ``bad`` for the caller to record on the device."""
    if _eager_values(message, bad, defer) and bool(bad):
        raise ValueError(message)
    return bad


def check_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Both tensors on one device; the error names both devices."""
    if a.device != b.device:
        raise ValueError(f"{name_a} are on {a.device} but {name_b} on {b.device}: move them to one device")


def check_logits(name: str, logits: torch.Tensor) -> None:
    """Logits (..., K): a tensor (``check_tensor``) with a class dimension, K >= 1 (an (N, 0) tensor has no
    distribution)."""
    check_tensor(name, logits)
    if logits.dim() < 1:
        raise ValueError(f"{name} must have a class dimension, got a scalar")
    if logits.shape[-1] == 0:
        raise ValueError(f"{name} {tuple(logits.shape)} have 0 classes: the last dimension must be >= 1")


def check_logit_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Student and teacher logits: the same shape (..., K), K >= 1, one device; names the sizes otherwise.

    Metadata only: finiteness is checked on the results (see ``check_finite``).
    """
    check_logits("student logits", student_logits)
    check_logits("teacher logits", teacher_logits)
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
    check_same_device("student logits", student_logits, "teacher logits", teacher_logits)


def check_same_leading(name: str, x: torch.Tensor, values: torch.Tensor) -> None:
    """``x`` (weights or mask) must have exactly the shape of the per-sample ``values``, on their device."""
    check_tensor(name, x)
    if x.shape != values.shape:
        raise ValueError(
            f"{name} shape {tuple(x.shape)} does not match the per-sample shape {tuple(values.shape)}; "
            f"a per-sample {name} must meet a per-sample loss (no broadcasting)"
        )
    check_same_device("per-sample values", values, name, x)
