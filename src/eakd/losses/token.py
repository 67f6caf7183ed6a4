"""Per-token divergences for LLM distillation: logits (..., V) -> (...) float32, never reduced.

p = softmax(teacher_logits / T) is the teacher, q = softmax(student_logits / T) the student; all math is
in float32 from log_softmax, whatever the input dtype. No T^2 factor (as in TRL's GKD and DistiLLM).
Positions to ignore (labels == ignore_index) are masked by the caller at the reduction::

    per_token = forward_kl(student_logits, teacher_logits)            # (B, T)
    loss = weighted_mean(per_token, weights, mask=token_mask(labels))

``TOKEN_DIVERGENCES`` holds the same math on float32 log-probabilities (log_q, log_p), for callers that
already have them (the chunked fused-linear loss in ``eakd.llm``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from eakd.checks import check_finite, check_logit_pair, check_positive
from eakd.losses.registry import register_loss

DivergenceMath = Callable[..., torch.Tensor]


def token_mask(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Boolean mask (...) of the positions whose label is not ``ignore_index``."""
    return labels != ignore_index


def check_coefficient(name: str, value: float) -> None:
    """A divergence's coefficient: JSD's ``beta`` in [0, 1]; the skew divergences' ``alpha`` in [0, 1) (at
    1 they are 0 whatever the teacher, so a broken teacher would pass unseen). ValueError otherwise."""
    if name == "alpha" and value == 1.0:
        raise ValueError("alpha must be in [0, 1): at 1 the skew divergence is 0 whatever the teacher")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, {'1)' if name == 'alpha' else '1]'}, got {value}")


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) over the last dim from log-probabilities (..., V) -> (...)."""
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def _log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, a_share: float) -> torch.Tensor:
    """log(a_share * a + (1 - a_share) * b) from log-probabilities, stable; a_share in [0, 1]."""
    if a_share == 1.0:
        return log_a
    if a_share == 0.0:
        return log_b
    return torch.logaddexp(log_a + math.log(a_share), log_b + math.log1p(-a_share))


def fkl_math(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Forward KL(p || q) (mode covering; Hinton KD without T^2)."""
    return _kl(log_p, log_q)


def rkl_math(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Reverse KL(q || p) (mode seeking; MiniLLM's objective)."""
    return _kl(log_q, log_p)


def jsd_math(log_q: torch.Tensor, log_p: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised JSD: beta * KL(p || m) + (1 - beta) * KL(q || m), m = beta * p + (1 - beta) * q.

    TRL's GKD convention: beta = 0 is defined as forward KL(p || q), beta = 1 as reverse KL(q || p)
    (the mixture formula itself tends to 0 at both ends); beta = 0.5 is the symmetric JSD.
    """
    check_coefficient("beta", beta)
    if beta == 0.0:
        return fkl_math(log_q, log_p)
    if beta == 1.0:
        return rkl_math(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def skl_math(log_q: torch.Tensor, log_p: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Skew forward KL (DistiLLM): KL(p || alpha * p + (1 - alpha) * q); alpha = 0 is forward KL."""
    check_coefficient("alpha", alpha)
    return _kl(log_p, _log_mixture(log_p, log_q, alpha))


def srkl_math(log_q: torch.Tensor, log_p: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Skew reverse KL (DistiLLM): KL(q || alpha * q + (1 - alpha) * p); alpha = 0 is reverse KL."""
    check_coefficient("alpha", alpha)
    return _kl(log_q, _log_mixture(log_q, log_p, alpha))


def tvd_math(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Total variation distance 0.5 * sum_v |p_v - q_v|, in [0, 1]."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)


TOKEN_DIVERGENCES: dict[str, DivergenceMath] = {
    "fkl": fkl_math,
    "rkl": rkl_math,
    "jsd": jsd_math,
    "skl": skl_math,
    "srkl": srkl_math,
    "tvd": tvd_math,
}


def token_log_probs(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked float32 (log_q, log_p) = log_softmax of student and teacher logits / T, each (..., V)."""
    check_logit_pair(student_logits, teacher_logits)
    check_positive("temperature", temperature)
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return log_q, log_p


@register_loss("fkl")
def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token forward KL(p || q); (..., V) logits -> (...) float32."""
    values = fkl_math(*token_log_probs(student_logits, teacher_logits, temperature))
    return check_finite("fkl loss from the student and teacher logits", values)


@register_loss("rkl")
def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token reverse KL(q || p); (..., V) logits -> (...) float32."""
    values = rkl_math(*token_log_probs(student_logits, teacher_logits, temperature))
    return check_finite("rkl loss from the student and teacher logits", values)


@register_loss("jsd")
def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token generalised JSD(beta) (TRL's convention, see ``jsd_math``); (..., V) -> (...)."""
    values = jsd_math(*token_log_probs(student_logits, teacher_logits, temperature), beta=beta)
    return check_finite("jsd loss from the student and teacher logits", values)


@register_loss("skl")
def skew_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token skew forward KL(p || alpha p + (1 - alpha) q); (..., V) -> (...)."""
    values = skl_math(*token_log_probs(student_logits, teacher_logits, temperature), alpha=alpha)
    return check_finite("skl loss from the student and teacher logits", values)


@register_loss("srkl")
def skew_reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token skew reverse KL(q || alpha q + (1 - alpha) p); (..., V) -> (...)."""
    values = srkl_math(*token_log_probs(student_logits, teacher_logits, temperature), alpha=alpha)
    return check_finite("srkl loss from the student and teacher logits", values)


@register_loss("tvd")
def total_variation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token total variation distance 0.5 * sum |p - q|; (..., V) -> (...)."""
    values = tvd_math(*token_log_probs(student_logits, teacher_logits, temperature))
    return check_finite("tvd loss from the student and teacher logits", values)
