"""Multi-level logit distillation (MLKD / MLD, Jin et al., CVPR 2023) as per-sample pieces.

MLKD aligns student and teacher predictions at three levels, each at several temperatures (the paper's
"prediction augmentation"; the terms are summed over the temperatures):

- instance level: KD per sample (``multi_temperature_kd``), shape (N,);
- class level: the C x C Gram matrices of the softmax outputs (``class_correlation_loss``), 0-dim;
- batch level: the N x N Gram matrices (``batch_correlation_loss``), one row per sample, (N,).

The registered ``"mlkd"`` loss handles one augmented view; the vision distiller calls it once per view
(weak and strong) and adds the results. EA reweights the KD terms only (EA-KD, section 2): ``"kd"`` is
per sample and gets the weight, ``"cc"`` and ``"bc"`` are batch-level 0-dim terms and do not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from eakd.checks import check_logit_pair, check_logits, check_positive
from eakd.losses.logit import kd_loss
from eakd.losses.registry import register_loss


def _probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Stacked softmax(z / T) of student and teacher: (2, N, C) float32, for the correlation terms."""
    check_logit_pair(student_logits, teacher_logits)
    check_positive("temperature", temperature)
    if student_logits.dim() != 2:
        raise ValueError(f"correlation terms need (N, C) logits, got shape {tuple(student_logits.shape)}")
    return F.softmax(torch.stack([student_logits.float(), teacher_logits.float()]) / temperature, dim=-1)


def multi_temperature_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperatures: Sequence[float],
    defer: bool = False,
) -> torch.Tensor:
    """Sum over the temperatures of the per-sample KD loss (each T^2-scaled): (..., K) -> (...); defer: as
    in ``kd_loss``."""
    if not temperatures:
        raise ValueError("multi_temperature_kd needs at least one temperature")
    kd = [kd_loss(student_logits, teacher_logits, t, defer=defer) for t in temperatures]
    return torch.stack(kd).sum(dim=0)


def class_correlation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Class-level consistency: ||P_t^T P_t - P_s^T P_s||_F^2 / C with P = softmax(z / T) of shape (N, C).

    (N, C) logits -> 0-dim float32 (a batch-level term).
    """
    p_s, p_t = _probs(student_logits, teacher_logits, temperature)
    diff = p_t.T @ p_t - p_s.T @ p_s
    return diff.square().sum() / p_s.shape[-1]


def batch_correlation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Batch-level consistency per sample: row n of (P_t P_t^T - P_s P_s^T)^2, summed over the batch.

    (N, C) logits -> (N,) float32. Their mean is MLKD's batch term ||P_t P_t^T - P_s P_s^T||_F^2 / N.
    Row n also depends on the other samples, so it is not a loss of sample n alone.
    """
    p_s, p_t = _probs(student_logits, teacher_logits, temperature)
    diff = p_t @ p_t.T - p_s @ p_s.T
    return diff.square().sum(dim=-1)


def confidence_mask(
    teacher_logits: torch.Tensor, percentile: float = 50.0, keep: str = "below"
) -> torch.Tensor:
    """Split samples by the teacher's confidence max_k softmax(z_t)_k at a percentile of the batch.

    teacher_logits (N, K) -> (N,) bool. keep="below": confidence <= the percentile (the MLKD authors'
    code); keep="above": confidence >= it (keep the confident samples). percentile in [0, 100], linear
    interpolation between samples as numpy.percentile does.
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if keep not in ("below", "above"):
        raise ValueError(f"keep must be 'below' or 'above', got {keep!r}")
    check_logits("teacher logits", teacher_logits)
    with torch.no_grad():
        conf = F.softmax(teacher_logits.detach().float(), dim=-1).amax(dim=-1)
        thresh = torch.quantile(conf, percentile / 100.0)
        return conf <= thresh if keep == "below" else conf >= thresh


@register_loss("mlkd")
def mlkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    extra_temperatures: Sequence[float] = (2.0, 3.0, 5.0, 6.0),
    confidence_percentile: float | None = None,
    confidence_keep: str = "below",
    defer: bool = False,
) -> dict[str, torch.Tensor]:
    """MLKD on one view: {"kd": (N,), "cc": 0-dim, "bc": 0-dim}, each summed over the temperatures.

    student_logits, teacher_logits: (N, C). The temperatures are ``temperature`` (the configured base T,
    e.g. 4, or 2 with logit standardisation) plus ``extra_temperatures``: MLKD's set {T, 2, 3, 5, 6}.
    confidence_percentile: None (default, no masking, as the paper) or a percentile of the teacher's
    confidence (``confidence_mask``); samples outside the mask get 0 in "kd" and in their "bc" row.
    "kd" is reweighted by EA; "cc" and "bc" are not. defer: as in ``kd_loss``.

    Quirks of the MLKD authors' code (not reproduced by default): their masks multiply batch means, so
    they only scale the weak view's kd, cc and bc terms by about 1/2; of the strong view only the kd
    terms are used, and its T = 2 and 6 terms reuse the weak view's logits.
    """
    temps = [temperature, *extra_temperatures]
    kd = multi_temperature_kd(student_logits, teacher_logits, temps, defer)
    cc = torch.stack([class_correlation_loss(student_logits, teacher_logits, t) for t in temps]).sum()
    bc = torch.stack([batch_correlation_loss(student_logits, teacher_logits, t) for t in temps]).sum(dim=0)
    if confidence_percentile is not None:
        keep = confidence_mask(teacher_logits, confidence_percentile, confidence_keep).to(kd.dtype)
        kd, bc = kd * keep, bc * keep
    return {"kd": kd, "cc": cc, "bc": bc.mean()}
