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

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from eakd.checks import check_finite, check_nonnegative, check_positive
from eakd.distill import check_weight_norm
from eakd.losses.token import TOKEN_DIVERGENCES, check_coefficient
from eakd.weighting import Policy, get_policy, takes_setting

WEIGHT_LEVELS = ("token", "sequence")
DEFAULT_TAU = 2.0  # the token loss's entropy temperature unless set
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


@dataclass(frozen=True)
class TokenLossSettings:
    """What to compute per token. divergence: fkl, rkl, jsd, skl, srkl, tvd. beta: JSD's beta; alpha: the
    skew of skl/srkl. temperature: of the divergence. weighting: a policy name of ``eakd.weighting`` ("ea",
    "er", "base", "interact", "inverse", "uniform") or None for the unweighted baseline; tau, h_ub: its
    settings (tau None = the policy's default entropy temperature; h_ub None = ln V). weight_level: "token"
    or "sequence". weight_norm: "none" (the paper's weights) or "mean" (divided by their mean over the
    call's valid tokens: KD's loss scale, EA's emphasis; an extension). kd_weight, ce_weight: outer
    weights of the distillation and hard-label terms. fused: the divergence and both entropies from one
    compiled pass over each chunk of logits (``eakd.losses.fused.fused_token_terms``; built-in weightings
    only), instead of the eager divergence and a separate entropy pass. Every value is checked here
    (ValueError): temperature, tau, h_ub > 0; beta in [0, 1], alpha in [0, 1); weights finite >= 0."""

    divergence: str = "fkl"
    beta: float = 0.5
    alpha: float = 0.1
    temperature: float = 1.0
    weighting: str | None = "ea"
    tau: float | None = DEFAULT_TAU
    h_ub: float | None = None
    weight_level: str = "token"
    weight_norm: str = "none"
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    ignore_index: int = -100
    fused: bool = False

    def __post_init__(self) -> None:
        types = {"divergence": str, "weight_level": str, "weight_norm": str, "ignore_index": int}
        for name, kind in {**types, "fused": bool}.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"{name} must be {kind.__name__}, got {type(value).__name__} {value!r}")
        if self.divergence not in TOKEN_DIVERGENCES:
            known = ", ".join(sorted(TOKEN_DIVERGENCES))
            raise ValueError(f"unknown token divergence {self.divergence!r}; known: {known}")
        if self.weight_level not in WEIGHT_LEVELS:
            raise ValueError(f"weight_level must be one of {WEIGHT_LEVELS}, got {self.weight_level!r}")
        check_weight_norm(self.weight_norm)
        check_positive("temperature", self.temperature)
        for name in ("tau", "h_ub"):
            value = getattr(self, name)
            if value is not None:
                check_positive(name, value)
        for name in ("beta", "alpha"):
            check_coefficient(name, getattr(self, name))
        for name in ("kd_weight", "ce_weight"):
            check_nonnegative(name, getattr(self, name))
        policy = self.policy()  # unknown policy names and bad tau / h_ub fail here, not mid-training
        if self.fused and policy is not None and policy.rule is None:
            raise ValueError(f"fused needs a built-in weighting, not the custom policy {policy.name!r}")

    def policy(self) -> Policy | None:
        """The bound weight policy (its ``tau``: the entropy temperature in use); None when unweighted. A
        user callable gets the default tau only if it takes a tau (any other tau it does not take is an
        error of ``get_policy``)."""
        kw = {k: v for k, v in (("tau", self.tau), ("h_ub", self.h_ub)) if v is not None}
        if self.weighting in ("uniform", None, "none"):
            kw = {}
        elif callable(self.weighting) and self.tau == DEFAULT_TAU:
            kw = kw if takes_setting(self.weighting, "tau") else {k: v for k, v in kw.items() if k != "tau"}
        return get_policy(self.weighting, **kw)

    def divergence_settings(self) -> dict[str, float]:
        """The divergence's own settings: beta for jsd, alpha for skl and srkl."""
        if self.divergence == "jsd":
            return {"beta": self.beta}
        return {"alpha": self.alpha} if self.divergence in ("skl", "srkl") else {}

    def divergence_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(log_q, log_p) -> (...) per-token divergence with beta/alpha bound."""
        fn, settings = TOKEN_DIVERGENCES[self.divergence], self.divergence_settings()
        return lambda lq, lp: fn(lq, lp, **settings)


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
