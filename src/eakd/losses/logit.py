"""Per-sample logit distillation losses: KD (Hinton) and DKD (decoupled KD). Nothing is reduced."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eakd.checks import (
    check_finite,
    check_logit_pair,
    check_positive,
    check_positive_values,
    check_same_device,
)
from eakd.losses.reduce import weighted_mean
from eakd.losses.registry import register_loss

IGNORE_INDEX = -100  # a target that carries no hard-label loss (torch's and Hugging Face's convention)


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """The hard-label cross-entropy in float32: logits (N, K), target (N,) class indices -> 0-dim, the mean
    over the targets that are not ``ignore_index``. A batch whose targets are all ``ignore_index`` gives 0
    (``weighted_mean``'s rule for no valid position; torch's mean would be 0/0 = NaN), as the token loss's
    CE term does (``eakd.llm``)."""
    per_sample = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    return weighted_mean(per_sample, mask=target != ignore_index)


def _check_target(target: torch.Tensor, logits: torch.Tensor) -> None:
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match the logits' leading shape "
            f"{tuple(logits.shape[:-1])}"
        )
    check_same_device("logits", logits, "target labels", target)


def _divisor(temperature: float | torch.Tensor, logits: torch.Tensor, defer: bool) -> float | torch.Tensor:
    """Check a temperature and shape it to divide logits (..., K).

    A float, or a tensor of shape () (one learnable temperature) or (...) (one per sample, e.g. CTKD's
    per-instance temperature), all > 0 (a tensor's values: ``eakd.checks.check_positive_values``, with
    ``defer``); a (...) tensor comes back as (..., 1).
    """
    if not isinstance(temperature, torch.Tensor):
        check_positive("temperature", temperature)
        return temperature
    if temperature.shape not in (torch.Size(), logits.shape[:-1]):
        raise ValueError(
            f"temperature shape {tuple(temperature.shape)} must be () or the logits' leading shape "
            f"{tuple(logits.shape[:-1])}"
        )
    t = check_positive_values("temperature", temperature.float(), defer=defer)
    return t.unsqueeze(-1) if t.dim() else t


@register_loss("kd")
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor = 4.0,
    *,
    defer: bool = False,
) -> torch.Tensor:
    """Hinton KD per sample: T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) summed over classes.

    (..., K) logits -> (...) float32 losses. temperature: a float, or a tensor of shape () or (...)
    (one per sample); gradients flow into a tensor temperature. A non-finite result or a tensor
    temperature <= 0 is a ValueError (a host read); ``defer=True`` (training loops): no host read and no
    error, the bad rows come out NaN for the caller's device-side check (``eakd.checks``).
    """
    check_logit_pair(student_logits, teacher_logits)
    t = _divisor(temperature, student_logits, defer)
    log_ps = F.log_softmax(student_logits.float() / t, dim=-1)
    log_pt = F.log_softmax(teacher_logits.float() / t, dim=-1)
    loss = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1) * temperature**2
    return check_finite("KD loss from the student and teacher logits", loss, defer=defer)


def _binary_kl(log_p_t: torch.Tensor, log_p_s: torch.Tensor) -> torch.Tensor:
    """KL between two-way distributions given as (..., 2) log-probabilities -> (...)."""
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)


@register_loss("dkd")
def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float | torch.Tensor = 4.0,
    *,
    defer: bool = False,
) -> torch.Tensor:
    """Decoupled KD per sample: alpha * TCKD + beta * NCKD, each scaled by T^2.

    TCKD: KL between the binary (target, non-target) distributions of teacher and student.
    NCKD: KL between the distributions over non-target classes only.
    logits (N, K), target (N,) int64 -> (N,) float32. temperature, defer: as in ``kd_loss``.
    """
    check_logit_pair(student_logits, teacher_logits)
    t = _divisor(temperature, student_logits, defer)
    _check_target(target, student_logits)
    zs = student_logits.float() / t
    zt = teacher_logits.float() / t
    gt = F.one_hot(target, zs.shape[-1]).to(torch.bool)

    def split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # log p(target) and log p(non-target) of the full softmax, stable via logsumexp
        lse = torch.logsumexp(z, dim=-1)
        z_gt = z.masked_fill(~gt, float("-inf")).logsumexp(dim=-1)
        z_other = z.masked_fill(gt, float("-inf"))
        binary = torch.stack([z_gt - lse, z_other.logsumexp(dim=-1) - lse], dim=-1)
        return binary, F.log_softmax(z_other, dim=-1)

    bin_s, other_s = split(zs)
    bin_t, other_t = split(zt)
    tckd = _binary_kl(bin_t, bin_s)
    pt_other = other_t.exp()
    nckd = (pt_other * (other_t.masked_fill(gt, 0.0) - other_s.masked_fill(gt, 0.0))).sum(dim=-1)
    loss = (alpha * tckd + beta * nckd) * temperature**2
    return check_finite("DKD loss from the student and teacher logits", loss, defer=defer)


def linear_warmup(epoch: float, warmup_epochs: float) -> float:
    """DKD/ReviewKD loss warm-up factor min(epoch / warmup_epochs, 1); 1 when warmup_epochs <= 0."""
    if warmup_epochs <= 0:
        return 1.0
    return min(max(epoch, 0.0) / warmup_epochs, 1.0)
