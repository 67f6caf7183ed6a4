"""Entropies and per-sample weight policies (EA, ER, their halves, uniform, inverse), from one rule table.

A built-in policy is a ``Rule``: weights from the student's and the teacher's entropies H_s, H_t (nats, at
the entropy temperature tau) and the bound H_ub. ``get_policy`` binds a rule (or a user's callable) to its
settings once, checking them, and returns a ``Policy``: called as ``policy(student_logits (..., K),
teacher_logits (..., K), mask (...) | None)`` it gives detached float32 weights of shape ``(...)``: (N,)
for samples/RoIs, (B, T) for tokens; masked positions get 0. ``policy.compute`` also returns the
entropies it used, so diagnostics never recompute them, and ``policy.from_entropies`` applies the same
rule to given entropies (a cached teacher's). ``ea_weights`` & co. are the rules as plain functions.
A user callable's weights must be finite and >= 0 (``eakd.checks.check_weight_values``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, ParamSpec, TypeVar

import torch

from eakd.checks import (
    check_finite,
    check_logit_pair,
    check_logits,
    check_positive,
    check_same_leading,
    check_weight_values,
)
from eakd.registry import Registry

Tensor = torch.Tensor
WEIGHTS_RANGE = "eakd.weights"  # the torch.profiler range of the weight path (benchmarks/step_attribution.py)
P = ParamSpec("P")
R = TypeVar("R")


def _profiled(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` inside a ``torch.profiler.record_function(WEIGHTS_RANGE)`` range (a few us when no profiler
    runs), so that a profile attributes the weight path's operations to EA."""

    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch.profiler.record_function(WEIGHTS_RANGE):
            return fn(*args, **kwargs)

    return wrapped


def _entropy(logits: Tensor, tau: float) -> Tensor:
    """Unchecked entropy in nats over the last dim: (..., K) -> (...) float32 (see ``entropy``)."""
    logp = torch.log_softmax(logits.float() / tau, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def entropy(logits: Tensor, tau: float = 1.0) -> Tensor:
    """Shannon entropy in nats of softmax(logits / tau) over the last dim.

    logits (..., K) in any float dtype -> (...) float32, from log_softmax (stable, no epsilon; measured
    faster on CPU than softmax + entr or the authors' log(p + 1e-10)). A NaN or inf logit raises
    ValueError, as do K = 0 classes and a tau that is not finite and > 0.
    """
    check_positive("tau", tau)
    check_logits("logits", logits)
    return check_finite("entropy of the logits", _entropy(logits, tau))


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
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


def _finish(w: Tensor, mask: Tensor | None, defer: bool) -> Tensor:
    """Check the weights (a NaN/inf logit makes its row's weight non-finite; ``eakd.checks.check_finite``
    with ``defer``) and zero masked positions."""
    check_finite("weights from the student and teacher logits", w, defer=defer)
    if mask is None:
        return w
    check_same_leading("mask", mask, w)
    return w * mask.to(torch.bool)


def _ea(h_s: Tensor, h_t: Tensor, bound: float) -> Tensor:
    return h_s.mul(0.5 / bound).add_(0.5).mul_(h_t)


@dataclass(frozen=True)
class Rule:
    """A built-in policy. fn(H_s, H_t, H_ub) -> weights (a new tensor); tau: its default entropy
    temperature (None: it uses no entropies); student / bound: whether it reads H_s / H_ub."""

    fn: Callable[[Tensor, Tensor, float], Tensor]
    tau: float | None
    student: bool
    bound: bool
    doc: str


RULES: dict[str, Rule] = {
    "ea": Rule(_ea, 3.0, True, True, "EA-KD: w = 0.5 * H_t * (1 + H_s / H_ub)"),
    "er": Rule(lambda h_s, h_t, b: h_t.clone(), 4.0, False, False, "ER-KD: w = H_t (no 1/2), tau 4"),
    "base": Rule(lambda h_s, h_t, b: h_t.clone(), 3.0, False, False, "EA's static half (w_base): w = H_t"),
    "interact": Rule(
        lambda h_s, h_t, b: h_t * h_s / b, 3.0, True, True, "EA's dynamic half: H_t * H_s / H_ub"
    ),
    "inverse": Rule(lambda h_s, h_t, b: b - _ea(h_s, h_t, b), 3.0, True, True, "control: w = H_ub - w_EA"),
    "uniform": Rule(lambda h_s, h_t, b: torch.ones_like(h_t), None, False, False, "all ones (unweighted)"),
}

POLICIES: Registry[Rule | Callable[..., Tensor]] = Registry("weight policy")
for _name, _rule in RULES.items():
    POLICIES.register(_name)(_rule)


class Weighted(NamedTuple):
    """A policy's output: weights (...) and the entropies H_s, H_t (...) it used (None if it used none)."""

    weights: Tensor
    h_s: Tensor | None
    h_t: Tensor | None


@dataclass(frozen=True)
class Policy:
    """A weight policy bound to its settings (see ``get_policy``); settings are checked when it is built.

    name: registry name (or the callable's). rule: the built-in rule, or None for a user callable ``fn``
    (called as ``fn(student_logits, teacher_logits, mask=mask, **settings)``). tau: entropy temperature
    (None: no entropies). h_ub: bound (None: ln K). standardized: entropies of LS-standardised logits.
    """

    name: str
    rule: Rule | None = None
    fn: Callable[..., Tensor] | None = None
    tau: float | None = None
    h_ub: float | None = None
    standardized: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    @_profiled
    def entropies(
        self, student_logits: Tensor | None, teacher_logits: Tensor
    ) -> tuple[Tensor | None, Tensor]:
        """Detached (H_s or None, H_t) in nats at this policy's tau (1 for a callable), float32 (...)."""
        tau = 1.0 if self.tau is None else self.tau
        prep = standardize if self.standardized else (lambda z: z)
        with torch.no_grad():  # standardised in float32, not in a bf16 input's precision
            h_t = _entropy(prep(teacher_logits.detach().float()), tau)
            h_s = None if student_logits is None else _entropy(prep(student_logits.detach().float()), tau)
        return h_s, h_t

    @_profiled
    def from_entropies(
        self,
        h_s: Tensor | None,
        h_t: Tensor,
        num_classes: int,
        mask: Tensor | None = None,
        *,
        defer: bool = False,
    ) -> Tensor:
        """The rule's weights from given entropies in nats (...) -> (...) (built-in rules only). Non-finite
        weights are a ValueError; ``defer=True`` (training loops): no host read, no error."""
        if self.rule is None:
            raise ValueError(f"weight policy {self.name!r} has no entropy form (custom policies need logits)")
        bound = resolve_h_ub(self.h_ub, num_classes) if self.rule.bound else 0.0
        if self.rule.student and h_s is None:
            raise ValueError(f"weight policy {self.name!r} needs the student's entropies")
        h_s = h_t if h_s is None else h_s
        return _finish(self.rule.fn(h_s.float(), h_t.float(), bound), mask, defer)

    @_profiled
    def compute(
        self,
        student_logits: Tensor | None,
        teacher_logits: Tensor,
        mask: Tensor | None = None,
        *,
        defer: bool = False,
    ) -> Weighted:
        """Weights (...) and the entropies behind them; student_logits may be None for teacher-only rules.
        defer: as in ``from_entropies``."""
        if student_logits is not None:
            check_logit_pair(student_logits, teacher_logits)
        check_logits("teacher logits", teacher_logits)
        if self.rule is None:
            assert self.fn is not None
            w = self.fn(student_logits, teacher_logits, mask=mask, **self.settings)
            if not isinstance(w, Tensor):
                raise TypeError(f"weight policy {self.name!r} returned {type(w).__name__}, not a tensor")
            if w.shape != teacher_logits.shape[:-1]:
                raise ValueError(
                    f"weight policy {self.name!r} returned shape {tuple(w.shape)}, expected the logits' "
                    f"leading shape {tuple(teacher_logits.shape[:-1])}"
                )
            w = w.detach()
            if mask is not None:  # masked positions get 0, whatever the callable gave there
                check_same_leading("mask", mask, w)
                w = torch.where(mask.to(torch.bool), w, torch.zeros((), dtype=w.dtype, device=w.device))
            return Weighted(
                check_weight_values(f"weights of policy {self.name!r}", w, defer=defer), None, None
            )
        if self.rule.tau is None:  # no entropies (uniform)
            ones = torch.ones(teacher_logits.shape[:-1], dtype=torch.float32, device=teacher_logits.device)
            return Weighted(_finish(ones, mask, defer), None, None)
        if self.rule.student and student_logits is None:
            raise ValueError(f"weight policy {self.name!r} needs the student's logits")
        h_s, h_t = self.entropies(student_logits, teacher_logits)
        weights = self.from_entropies(h_s, h_t, teacher_logits.shape[-1], mask, defer=defer)
        return Weighted(weights, h_s, h_t)

    def __call__(
        self, student_logits: Tensor | None, teacher_logits: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        return self.compute(student_logits, teacher_logits, mask).weights


def register_policy(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator adding a weight policy ``fn(student_logits, teacher_logits, mask=None, **settings)``."""
    if name == "none":
        raise ValueError("weight policy 'none' is reserved (the unweighted loss)")
    return POLICIES.register(name)


def takes_setting(fn: Callable[..., Tensor], name: str) -> bool:
    """Whether the user policy ``fn`` takes the setting ``name`` (a parameter so named, or ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def get_policy(weighting: str | Callable[..., Tensor] | None, **settings: Any) -> Policy | None:
    """Bind a policy (a name or a callable) to its settings; ``None`` / ``"none"``: unweighted (None).

    Built-in rules take ``tau`` (> 0), ``h_ub`` (> 0, rules that use the bound) and ``standardized``; a
    setting the policy does not take is a ValueError here, not at the first step.
    """
    if weighting is None or weighting == "none":
        if settings:
            raise ValueError(f"weighting 'none' takes no settings, got {sorted(settings)}")
        return None
    if not isinstance(weighting, str) and not callable(weighting):
        raise TypeError(
            "weighting must be a policy name, a callable or None, got "
            f"{type(weighting).__name__} {weighting!r}"
        )
    obj = weighting if callable(weighting) else POLICIES.get(weighting)
    name = weighting if isinstance(weighting, str) else getattr(weighting, "__name__", "callable")
    if not isinstance(obj, Rule):
        unknown = sorted(k for k in settings if not takes_setting(obj, k))
        if unknown:
            raise ValueError(f"weight policy {name!r} takes no setting(s) {unknown}")
        return Policy(name, fn=obj, settings=settings)
    allowed = {"tau", "standardized"} if obj.tau is not None else set()
    allowed |= {"h_ub"} if obj.bound else set()
    unknown = sorted(k for k, v in settings.items() if k not in allowed and v not in (None, False))
    if unknown:
        raise ValueError(f"weight policy {name!r} takes no setting(s) {unknown}; it takes {sorted(allowed)}")
    tau = settings.get("tau")
    if tau is not None:
        check_positive("tau", tau)
    tau = obj.tau if tau is None else float(tau)
    h_ub = settings.get("h_ub")
    if h_ub is not None:
        check_positive("h_ub", h_ub)
    return Policy(name, rule=obj, tau=tau, h_ub=h_ub, standardized=bool(settings.get("standardized", False)))


def _rule_function(name: str) -> Callable[..., Tensor]:
    """``name``'s rule as a plain function of the logits, with its settings as keyword arguments."""
    rule = RULES[name]

    def weights(
        student_logits: Tensor | None,
        teacher_logits: Tensor,
        tau: float | None = rule.tau,
        h_ub: float | None = None,
        mask: Tensor | None = None,
        standardized: bool = False,
    ) -> Tensor:
        policy = get_policy(name, tau=tau, h_ub=h_ub, standardized=standardized)
        assert policy is not None
        return policy(student_logits, teacher_logits, mask)

    weights.__name__ = weights.__qualname__ = f"{name}_weights"
    weights.__doc__ = (
        f"{rule.doc}. Detached float32 weights (...) from logits (..., K); tau: entropy temperature "
        f"(default {rule.tau}); h_ub: entropy bound (None = ln K); mask (...): 0 where False; "
        "standardized: entropies of LS-standardised logits."
    )
    return weights


ea_weights = _rule_function("ea")
er_weights = _rule_function("er")
base_weights = _rule_function("base")
interact_weights = _rule_function("interact")
inverse_weights = _rule_function("inverse")
uniform_weights = _rule_function("uniform")


WEIGHT_NORMS = ("none", "mean")


def check_weight_norm(weight_norm: str) -> None:
    """``weight_norm`` must be one of ``WEIGHT_NORMS`` (ValueError otherwise)."""
    if weight_norm not in WEIGHT_NORMS:
        raise ValueError(f"weight_norm must be one of {WEIGHT_NORMS}, got {weight_norm!r}")


def normalise_weights(weights: torch.Tensor, mask: torch.Tensor | None, weight_norm: str) -> torch.Tensor:
    """The weights (...) as used by the loss: unchanged for ``"none"`` (the paper's rule), divided by their
    mean over the valid positions of ``mask`` (same shape, bool; None = all) for ``"mean"``, so that their
    mean there is 1 and the loss keeps the unweighted loss's scale (an extension, not the paper's method).
    Detached; a mean of 0 (no valid position, or all weights 0) divides by the smallest float32 > 0."""
    if weight_norm == "none":
        return weights
    w = weights.detach()
    if mask is None:
        total, count = w.float().sum(), max(w.numel(), 1)
    else:
        valid = mask.to(torch.bool)
        total, count = torch.where(valid, w.float(), 0.0).sum(), valid.sum().clamp_min(1)
    return w / (total / count).clamp_min(torch.finfo(torch.float32).tiny).to(w.dtype)
