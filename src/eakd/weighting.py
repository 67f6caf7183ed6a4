"""Entropies and per-sample weight policies (EA, ER, their halves, uniform, inverse).

A policy maps ``(student_logits (..., K), teacher_logits (..., K), mask (...) | None)`` to detached
float32 weights of shape ``(...)``: (N,) for samples/RoIs, (B, T) for tokens. Masked positions get 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from eakd.checks import check_finite, check_logit_pair, check_positive

Policy = Callable[..., torch.Tensor]

POLICIES: dict[str, Callable[..., torch.Tensor]] = {}


def _entropy(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Unchecked entropy in nats over the last dim: (..., K) -> (...) float32 (see ``entropy``)."""
    logp = torch.log_softmax(logits.float() / tau, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def entropy(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Shannon entropy in nats of softmax(logits / tau) over the last dim.

    logits (..., K) in any float dtype -> (...) float32, from log_softmax (stable, no epsilon; measured
    faster on CPU than softmax + entr or the authors' log(p + 1e-10)). A NaN or inf logit raises
    ValueError.
    """
    check_positive("tau", tau)
    return check_finite("entropy of the logits", _entropy(logits, tau))


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (LS): (z - mean(z)) / std(z) over the last dim; same shape as ``logits``."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def resolve_h_ub(h_ub: float | None, num_classes: int) -> float:
    """The entropy upper bound: ``ln K`` when ``h_ub`` is None, else the given number (> 0)."""
    if h_ub is None:
        if num_classes < 2:
            raise ValueError(f"entropy upper bound ln K needs K >= 2 classes, got K = {num_classes}")
        return math.log(num_classes)
    check_positive("h_ub", h_ub)
    return float(h_ub)


def _entropies(
    student_logits: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    tau: float,
    standardized: bool,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Detached (H_s or None, H_t) in nats; finiteness is left to ``_finish`` on the weights."""
    check_positive("tau", tau)
    if student_logits is not None:
        check_logit_pair(student_logits, teacher_logits)
    prep = standardize if standardized else (lambda z: z)
    with torch.no_grad():
        h_t = _entropy(prep(teacher_logits.detach()), tau)
        h_s = None if student_logits is None else _entropy(prep(student_logits.detach()), tau)
    return h_s, h_t


def _finish(w: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Check the weights (a NaN/inf logit makes its row's weight non-finite) and zero masked positions."""
    check_finite("weights from the student and teacher logits", w)
    if mask is None:
        return w
    if mask.shape != w.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the weight shape {tuple(w.shape)}")
    return w * mask.to(torch.bool)


def _ea_rule(h_s: torch.Tensor, h_t: torch.Tensor, bound: float) -> torch.Tensor:
    return h_s.mul(0.5 / bound).add_(0.5).mul_(h_t)


def _interact_rule(h_s: torch.Tensor, h_t: torch.Tensor, bound: float) -> torch.Tensor:
    return h_t * h_s / bound


def _inverse_rule(h_s: torch.Tensor, h_t: torch.Tensor, bound: float) -> torch.Tensor:
    return bound - _ea_rule(h_s, h_t, bound)


ENTROPY_RULES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "ea": _ea_rule,
    "er": lambda h_s, h_t, bound: h_t.clone(),
    "base": lambda h_s, h_t, bound: h_t.clone(),
    "interact": _interact_rule,
    "inverse": _inverse_rule,
    "uniform": lambda h_s, h_t, bound: torch.ones_like(h_t),
}


def weights_from_entropies(
    weighting: str,
    student_entropy: torch.Tensor,
    teacher_entropy: torch.Tensor,
    h_ub: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """A built-in policy's weights from given entropies in nats (e.g. a cached teacher's): (...) -> (...).

    weighting: a name of ``ENTROPY_RULES`` (ea, er, base, interact, inverse, uniform); h_ub: the entropy
    upper bound (> 0, ln K for the paper). Same values as the logit policies at the same entropies.
    """
    if weighting not in ENTROPY_RULES:
        known = ", ".join(sorted(ENTROPY_RULES))
        raise ValueError(
            f"weight policy {weighting!r} has no entropy form (custom policies need logits); known: {known}"
        )
    check_positive("h_ub", h_ub)
    rule = ENTROPY_RULES[weighting]
    return _finish(rule(student_entropy.float(), teacher_entropy.float(), float(h_ub)), mask)


def ea_weights(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tau: float = 3.0,
    h_ub: float | None = None,
    mask: torch.Tensor | None = None,
    standardized: bool = False,
) -> torch.Tensor:
    """EA-KD weights w = 0.5 * H_t * (1 + H_s / H_ub), detached float32 of the logits' leading shape.

    student_logits, teacher_logits: (..., K). tau: entropy temperature (paper T'). h_ub: entropy upper
    bound, None = ln K (the paper); a number (e.g. 100.0) reproduces the authors' CIFAR code.
    mask (...): positions with False/0 get weight 0. standardized: entropies on LS-standardised logits.
    """
    h_s, h_t = _entropies(student_logits, teacher_logits, tau, standardized)
    bound = resolve_h_ub(h_ub, teacher_logits.shape[-1])
    return _finish(_ea_rule(h_s, h_t, bound), mask)


def er_weights(
    student_logits: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    tau: float = 4.0,
    mask: torch.Tensor | None = None,
    standardized: bool = False,
) -> torch.Tensor:
    """ER-KD weights w = H_t (teacher entropy only, no 1/2), detached; (..., K) -> (...)."""
    _, h_t = _entropies(None, teacher_logits, tau, standardized)
    return _finish(h_t, mask)


def base_weights(
    student_logits: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    tau: float = 3.0,
    mask: torch.Tensor | None = None,
    standardized: bool = False,
) -> torch.Tensor:
    """EA's static half (paper ablation "w_base"): w = H_t at the EA entropy temperature."""
    return er_weights(student_logits, teacher_logits, tau=tau, mask=mask, standardized=standardized)


def interact_weights(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tau: float = 3.0,
    h_ub: float | None = None,
    mask: torch.Tensor | None = None,
    standardized: bool = False,
) -> torch.Tensor:
    """EA's dynamic half (paper ablation "w_interact"): w = H_t * H_s / H_ub."""
    h_s, h_t = _entropies(student_logits, teacher_logits, tau, standardized)
    bound = resolve_h_ub(h_ub, teacher_logits.shape[-1])
    return _finish(_interact_rule(h_s, h_t, bound), mask)


def inverse_weights(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tau: float = 3.0,
    h_ub: float | None = None,
    mask: torch.Tensor | None = None,
    standardized: bool = False,
) -> torch.Tensor:
    """Negative control emphasising low-entropy samples: w = H_ub - w_EA (so 0 <= w <= H_ub)."""
    h_s, h_t = _entropies(student_logits, teacher_logits, tau, standardized)
    bound = resolve_h_ub(h_ub, teacher_logits.shape[-1])
    return _finish(_inverse_rule(h_s, h_t, bound), mask)


def uniform_weights(
    student_logits: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """All ones (masked positions 0): the unweighted loss, as an explicit policy."""
    w = torch.ones(teacher_logits.shape[:-1], dtype=torch.float32, device=teacher_logits.device)
    return _finish(w, mask)


POLICIES.update(
    ea=ea_weights,
    er=er_weights,
    base=base_weights,
    interact=interact_weights,
    inverse=inverse_weights,
    uniform=uniform_weights,
)


def register_policy(name: str) -> Callable[[Policy], Policy]:
    """Decorator adding a weight policy ``fn(student_logits, teacher_logits, mask=None, **kw)`` by name."""

    def add(fn: Policy) -> Policy:
        if name in POLICIES or name == "none":
            raise ValueError(f"weight policy {name!r} is already registered")
        POLICIES[name] = fn
        return fn

    return add


def get_policy(weighting: str | Policy | None, **kwargs: float | bool | None) -> Policy | None:
    """Resolve a policy by name (or pass a callable through), binding its keyword settings.

    ``None`` or ``"none"`` returns None: the loss is left unweighted, exactly the published baseline.
    """
    if weighting is None or weighting == "none":
        if kwargs:
            raise ValueError(f"weighting 'none' takes no settings, got {sorted(kwargs)}")
        return None
    if callable(weighting):
        return partial(weighting, **kwargs) if kwargs else weighting
    if weighting not in POLICIES:
        known = ", ".join(sorted([*POLICIES, "none"]))
        raise ValueError(f"unknown weight policy {weighting!r}; known policies: {known}")
    return partial(POLICIES[weighting], **kwargs)
