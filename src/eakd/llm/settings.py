"""What the token-level EA-KD loss computes (``TokenLossSettings``) and what it returns (``TokenLossOutput``).

Both loss paths (``eakd.llm.dense``, ``eakd.llm.chunked``) compute, per valid token n (labels !=
ignore_index),

    loss = kd_weight * sum_n w_n * D(p_n || q_n) / denom + ce_weight * sum_n CE_n / denom

with D a token divergence of ``eakd.losses.token`` at temperature T (p teacher, q student), w_n the
detached weight of a policy of ``eakd.weighting`` (EA by default, H_ub = ln V; per token, or per sequence
= the mean over the sequence's valid tokens; with weight_norm "mean" then divided by their mean over the
call's valid tokens, an extension), CE the hard-label cross-entropy of the student at T = 1,
and denom = ``num_items_in_batch`` when given (valid tokens over all gradient-accumulation micro-batches)
else the valid tokens of this call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import torch

from eakd.checks import check_finite, check_nonnegative, check_positive
from eakd.losses.registry import get_loss
from eakd.losses.token import check_coefficient
from eakd.weighting import Policy, check_weight_norm, get_policy

WEIGHT_LEVELS = ("token", "sequence")
LOSS_TERMS = ("weights", "kd", "ce")  # the order of ``TokenLossOutput.nonfinite``
# the input checks a loss defers to the device inside ``eakd.checks.deferred_checks()``, in the order of
# ``TokenLossOutput.invalid``: what each flag means
INPUT_CHECKS = {
    "labels": "labels outside [0, V) that are not ignore_index",
    "label_index": "a label_index that is not the positions of the batch's labels",
    "teacher_cache": (
        "a teacher cache that does not match the batch (token count) or holds impossible values (ids outside "
        "[0, V) or repeated, log-probs above 0 or summing above 1, entropies outside [0, ln V])"
    ),
}
TOKEN_INPUTS = ("student_logits", "teacher_logits")
DIVERGENCE_SETTINGS = ("beta", "alpha")  # the settings a divergence takes by name (jsd; skl, srkl)


def setting(default: Any, help: str, arm: bool = False) -> Any:
    """A declared setting: its default and help text (``help``, as ``transformers.HfArgumentParser`` and
    TRL's configs read it); ``arm``: a study arm may differ by it (left out of the shared warm start)."""
    return field(default=default, metadata={"help": help, "arm": arm})


def token_divergence(name: str) -> Callable[..., torch.Tensor]:
    """The registered loss ``name`` (``eakd.losses.LOSSES``) as a per-token divergence: a function of
    (student_logits, teacher_logits) (..., V) -> (...) that needs no other input; ValueError otherwise."""
    fn = get_loss(name)
    if isinstance(fn, type):
        raise ValueError(f"loss {name!r} is a module with learnable parts; a token divergence is a function")
    params = inspect.signature(fn).parameters
    needs = [n for n, p in params.items() if p.default is p.empty and n not in TOKEN_INPUTS]
    if any(n not in params for n in TOKEN_INPUTS) or needs:
        raise ValueError(
            f"loss {name!r} is not a token divergence: it must take {TOKEN_INPUTS} (and optional settings "
            f"such as temperature), not need {needs}"
        )
    return fn


@dataclass
class TokenLossSettings:
    """What to compute per token; every LLM loss setting is declared here once, with its help text, and
    ``EAKDConfig`` (the Trainer's config, the train section of a run config), the study arms and the CLI
    take them from here. Every value is checked when built (ValueError): temperature, tau, h_ub > 0; beta
    in [0, 1], alpha in [0, 1); the outer weights finite >= 0; the divergence and the policy by name."""

    divergence: str = setting(
        "fkl",
        "a per-token loss of eakd.losses.LOSSES: fkl, rkl, jsd, skl, srkl, tvd, or one registered with "
        "@register_loss taking (student_logits, teacher_logits[, temperature])",
        arm=True,
    )
    beta: float = setting(0.5, "jsd's beta (0: forward KL, 1: reverse KL, TRL's convention)", arm=True)
    alpha: float = setting(0.1, "the skew of skl / srkl, in [0, 1)", arm=True)
    temperature: float = setting(1.0, "the divergence's temperature T (no T^2 factor)")
    weighting: str | None = setting(
        "ea", "a weight policy of eakd.weighting (ea, er, base, interact, inverse, uniform) or none", arm=True
    )
    tau: float | None = setting(
        None, "the policy's entropy temperature; None: the policy's own default (EA 3, ER 4)", arm=True
    )
    h_ub: float | None = setting(None, "the policy's entropy bound; None: ln V", arm=True)
    weight_level: str = setting("token", "token, or sequence (each token gets its sequence's mean)", arm=True)
    weight_norm: str = setting(
        "none", "none (the paper's weights) or mean (divided by their mean over the valid tokens)", arm=True
    )
    kd_weight: float = setting(1.0, "weight of the distillation term")
    ce_weight: float = setting(0.0, "weight of the student's hard-label cross-entropy (never reweighted)")
    ignore_index: int = setting(-100, "the label of tokens without a loss (prompt, padding)")
    fused: bool = setting(
        False,
        "the divergence and the weights' entropies from one compiled pass (eakd.losses.fused; built-in "
        "divergences and weightings)",
    )

    def __post_init__(self) -> None:
        types = {"divergence": str, "weight_level": str, "weight_norm": str, "ignore_index": int}
        for name, kind in {**types, "fused": bool}.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"{name} must be {kind.__name__}, got {type(value).__name__} {value!r}")
        fn = token_divergence(self.divergence)
        if self.temperature != 1.0 and "temperature" not in inspect.signature(fn).parameters:
            raise ValueError(f"divergence {self.divergence!r} takes no temperature; leave temperature at 1")
        if self.weight_level not in WEIGHT_LEVELS:
            raise ValueError(f"weight_level must be one of {WEIGHT_LEVELS}, got {self.weight_level!r}")
        check_weight_norm(self.weight_norm)
        check_positive("temperature", self.temperature)
        for name in ("tau", "h_ub"):
            value = getattr(self, name)
            if value is not None:
                check_positive(name, value)
        for name in DIVERGENCE_SETTINGS:
            check_coefficient(name, getattr(self, name))
        for name in ("kd_weight", "ce_weight"):
            check_nonnegative(name, getattr(self, name))
        policy = self.policy()  # unknown policy names and bad tau / h_ub fail here, not mid-training
        if self.fused and policy is not None and policy.rule is None:
            raise ValueError(f"fused needs a built-in weighting, not the custom policy {policy.name!r}")
        if self.fused and not hasattr(fn, "on_log_probs"):
            raise ValueError(
                f"fused needs a divergence with a log-probability form (register_divergence), "
                f"not {self.divergence!r}"
            )

    @classmethod
    def of(cls, config: Any) -> TokenLossSettings:
        """The settings held by ``config`` (an ``EAKDConfig``, or any object with these attributes)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    def policy(self) -> Policy | None:
        """The bound weight policy (its ``tau``: the entropy temperature in use); None when unweighted."""
        kw = {k: v for k, v in (("tau", self.tau), ("h_ub", self.h_ub)) if v is not None}
        if self.weighting in ("uniform", None, "none"):
            kw = {}
        return get_policy(self.weighting, **kw)

    def divergence_settings(self) -> dict[str, float]:
        """The divergence's own settings it takes by name (beta for jsd, alpha for skl and srkl)."""
        params = inspect.signature(get_loss(self.divergence)).parameters
        return {name: getattr(self, name) for name in DIVERGENCE_SETTINGS if name in params}

    def divergence_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(student logits (..., V), teacher logits (..., V)) -> (...) per-token divergence, settings and
        temperature bound."""
        fn, kw = get_loss(self.divergence), self.divergence_settings()
        if "temperature" in inspect.signature(fn).parameters:
            kw["temperature"] = self.temperature
        return lambda zs, zt: fn(zs, zt, **kw)


class TokenLossOutput(NamedTuple):
    """loss: 0-dim, differentiable. kd, ce: 0-dim detached normalised terms before kd_weight/ce_weight.
    weights: (N,) detached per-token weights (0 at ignored tokens) or None when unweighted.
    per_token: (N,) detached unweighted divergence per token (0 at ignored tokens). N = B*T rows.
    h_t, h_s: (N,) teacher and student entropies in nats at the policy's tau, the ones the weights were
    computed from (0 at ignored tokens), or None when the policy uses none (unweighted, uniform, custom).
    invalid: (len(INPUT_CHECKS),) bool, the input checks deferred to the device (inside
    ``eakd.checks.deferred_checks()``; the values computed from a flagged input are not meaningful), or
    None when every input check ran on the host."""

    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    weights: torch.Tensor | None
    per_token: torch.Tensor
    h_t: torch.Tensor | None = None
    h_s: torch.Tensor | None = None
    invalid: torch.Tensor | None = None

    def nonfinite(self) -> torch.Tensor:
        """(3,) bool on the loss's device, in ``LOSS_TERMS`` order: whether the weights (their sum), kd and
        ce hold a NaN or inf. Device operations on reduced values only (a NaN or inf input makes its row's
        value, and so its term, non-finite): no host sync, no pass over the (N, V) logits."""
        w = self.kd.new_zeros(()) if self.weights is None else self.weights.sum()
        return ~torch.isfinite(torch.stack([w.float(), self.kd.float(), self.ce.float()]))

    def flags(self) -> torch.Tensor:
        """(len(LOSS_TERMS) + len(INPUT_CHECKS),) bool on the loss's device: ``nonfinite()``, then
        ``invalid`` (all False when the checks ran on the host). No host sync."""
        bad = self.nonfinite()
        invalid = bad.new_zeros(len(INPUT_CHECKS)) if self.invalid is None else self.invalid.to(bad.device)
        return torch.cat([bad, invalid])

    def check_finite(self) -> TokenLossOutput:
        """This output, or ValueError naming its first non-finite term (``eakd.checks.check_finite``: a host
        sync per term, none inside ``deferred_checks()``)."""
        if self.weights is not None:
            check_finite("the loss's weights", self.weights)
        check_finite("the loss's kd term", self.kd)
        check_finite("the loss's ce term", self.ce)
        return self
