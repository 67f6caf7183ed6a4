"""Per-token divergences for LLM distillation, registered in ``LOSSES`` like every per-sample loss.

Each divergence is written once, as math on float32 log-probabilities (log_q student, log_p teacher,
each (..., V) -> (...)), and registered by ``register_divergence``, which makes the loss of logits that
``LOSSES`` holds: ``loss(student_logits, teacher_logits, temperature=1.0, **settings)`` -> (...) float32,
never reduced, with p = softmax(teacher_logits / T), q = softmax(student_logits / T) from log_softmax in
float32 whatever the input dtype, and no T^2 factor (as in TRL's GKD and DistiLLM). The registered loss
keeps its math as ``loss.on_log_probs`` for callers that already have the log-probabilities (the
compiled single pass, ``eakd.losses.fused``). A divergence that is an expectation under the teacher,
D = sum_v p_v g(log_q_v, log_p_v), also keeps g as ``loss.teacher_expectation`` (else None): a sampled
teacher cache estimates D without bias from tokens drawn from p (``eakd.llm.sparse``). A user's own
``@register_loss`` divergence of logits works wherever these do (``eakd llm train``'s
``train.divergence``) but a sampled cache. Positions to ignore (labels == ignore_index) are masked by the
caller at the reduction::

    per_token = get_loss("fkl")(student_logits, teacher_logits)        # (B, T)
    loss = weighted_mean(per_token, weights, mask=token_mask(labels))
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from eakd.checks import check_finite, check_logit_pair, check_positive
from eakd.losses.registry import register_loss

Tensor = torch.Tensor
LogProbMath = Callable[..., Tensor]


def token_mask(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Boolean mask (...) of the positions whose label is not ``ignore_index``."""
    return labels != ignore_index


def check_coefficient(name: str, value: float) -> None:
    """A divergence's coefficient: JSD's ``beta`` in [0, 1]; the skew divergences' ``alpha`` in [0, 1) (at
    1 they are 0 whatever the teacher, so a broken teacher would pass unseen). ValueError otherwise."""
    if name == "alpha" and value == 1.0:
        raise ValueError("alpha must be in [0, 1): at 1 the skew divergence is 0 whatever the teacher")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, {'1)' if name == 'alpha' else '1]'}, got {value}")


def token_log_probs(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Checked float32 (log_q, log_p) = log_softmax of student and teacher logits / T, each (..., V)."""
    check_logit_pair(student_logits, teacher_logits)
    check_positive("temperature", temperature)
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return log_q, log_p


def register_divergence(
    name: str, teacher_expectation: LogProbMath | None = None
) -> Callable[[LogProbMath], Callable[..., Tensor]]:
    """Decorator: ``math(log_q, log_p, **settings)`` -> (...) registered in ``LOSSES`` under ``name`` as the
    per-token loss of logits ``(student_logits, teacher_logits, temperature=1.0, **settings, defer=False)``,
    checked finite (``defer``: as in ``kd_loss``), with the math kept as its ``on_log_probs``.
    teacher_expectation: g(log_q, log_p, **settings), elementwise (...) -> (...), when the divergence is
    sum_v p_v * g(log_q_v, log_p_v) (kept as the loss's ``teacher_expectation``, else None). Returns the
    registered loss."""

    def add(math_fn: LogProbMath) -> Callable[..., Tensor]:
        settings = list(inspect.signature(math_fn).parameters.values())[2:]

        def loss(
            student_logits: Tensor,
            teacher_logits: Tensor,
            temperature: float = 1.0,
            *,
            defer: bool = False,
            **kw: float,
        ) -> Tensor:
            values = math_fn(*token_log_probs(student_logits, teacher_logits, temperature), **kw)
            return check_finite(f"{name} loss from the student and teacher logits", values, defer=defer)

        logits = [
            inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Tensor)
            for n in ("student_logits", "teacher_logits")
        ]
        temp = inspect.Parameter("temperature", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1.0)
        defer = inspect.Parameter("defer", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool)
        signature = inspect.Signature([*logits, temp, *settings, defer], return_annotation=Tensor)
        loss.__signature__ = signature  # type: ignore[attr-defined]
        loss.__name__ = loss.__qualname__ = name
        loss.__doc__ = f"Per-token {name} of logits (..., V) -> (...) float32: {math_fn.__doc__}"
        loss.on_log_probs = math_fn  # type: ignore[attr-defined]
        loss.teacher_expectation = teacher_expectation  # type: ignore[attr-defined]
        return register_loss(name)(loss)

    return add


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) over the last dim from log-probabilities (..., V) -> (...)."""
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def _log_mixture(log_a: Tensor, log_b: Tensor, a_share: float) -> Tensor:
    """log(a_share * a + (1 - a_share) * b) from log-probabilities, stable; a_share in [0, 1]."""
    if a_share == 1.0:
        return log_a
    if a_share == 0.0:
        return log_b
    return torch.logaddexp(log_a + math.log(a_share), log_b + math.log1p(-a_share))


def _fkl(log_q: Tensor, log_p: Tensor) -> Tensor:
    """forward KL(p || q) (mode covering; Hinton KD without T^2)."""
    return _kl(log_p, log_q)


def _rkl(log_q: Tensor, log_p: Tensor) -> Tensor:
    """reverse KL(q || p) (mode seeking; MiniLLM's objective)."""
    return _kl(log_q, log_p)


def _jsd(log_q: Tensor, log_p: Tensor, beta: float = 0.5) -> Tensor:
    """generalised JSD beta * KL(p || m) + (1 - beta) * KL(q || m), m = beta * p + (1 - beta) * q, in
    TRL's GKD convention: beta = 0 is forward KL(p || q), beta = 1 reverse KL(q || p) (the mixture formula
    itself tends to 0 at both ends); beta = 0.5 is the symmetric JSD."""
    check_coefficient("beta", beta)
    if beta == 0.0:
        return _fkl(log_q, log_p)
    if beta == 1.0:
        return _rkl(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def _skl(log_q: Tensor, log_p: Tensor, alpha: float = 0.1) -> Tensor:
    """skew forward KL(p || alpha * p + (1 - alpha) * q) (DistiLLM); alpha = 0 is forward KL."""
    check_coefficient("alpha", alpha)
    return _kl(log_p, _log_mixture(log_p, log_q, alpha))


def _srkl(log_q: Tensor, log_p: Tensor, alpha: float = 0.1) -> Tensor:
    """skew reverse KL(q || alpha * q + (1 - alpha) * p) (DistiLLM); alpha = 0 is reverse KL."""
    check_coefficient("alpha", alpha)
    return _kl(log_q, _log_mixture(log_q, log_p, alpha))


def _tvd(log_q: Tensor, log_p: Tensor) -> Tensor:
    """total variation distance 0.5 * sum_v |p_v - q_v|, in [0, 1]."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)


def _fkl_g(log_q: Tensor, log_p: Tensor) -> Tensor:
    """forward KL = sum_v p_v (log p_v - log q_v): its g, elementwise."""
    return log_p - log_q


def _skl_g(log_q: Tensor, log_p: Tensor, alpha: float = 0.1) -> Tensor:
    """skew forward KL = sum_v p_v (log p_v - log m_v), m = alpha p + (1 - alpha) q: its g, elementwise."""
    check_coefficient("alpha", alpha)
    return log_p - _log_mixture(log_p, log_q, alpha)


# rkl, srkl, jsd (beta > 0) and tvd weigh tokens by the student's probability q_v too: written as an
# expectation under p their g holds q_v / p_v, unbounded where the teacher is unlikely, so they have none
forward_kl = register_divergence("fkl", _fkl_g)(_fkl)
reverse_kl = register_divergence("rkl")(_rkl)
generalized_jsd = register_divergence("jsd")(_jsd)
skew_kl = register_divergence("skl", _skl_g)(_skl)
skew_reverse_kl = register_divergence("srkl")(_srkl)
total_variation = register_divergence("tvd")(_tvd)
DIVERGENCES = ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")  # the built-in ones, for tests and docs
