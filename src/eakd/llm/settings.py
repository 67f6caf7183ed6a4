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

``GenerationSettings``: where a training batch's responses come from (the dataset's, the student's own
generations, or the teacher's: GKD's ``lmbda`` and ``seq_kd``, ``eakd.llm.onpolicy``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple

import torch

from eakd.checks import check_finite, check_nonnegative, check_positive
from eakd.losses.fused_rule import check_fused, use_fused
from eakd.losses.registry import get_loss
from eakd.losses.token import check_coefficient
from eakd.weighting import Policy, check_weight_norm, get_policy

WEIGHT_LEVELS = ("token", "sequence")
LOSS_TERMS = ("weights", "kd", "ce")  # the order of ``TokenLossOutput.nonfinite``
# the input checks a loss defers to the device when called with ``defer=True`` (``eakd.checks``), in the
# order of ``TokenLossOutput.invalid``: what each flag means
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
    fused: bool | Literal["auto"] = setting(
        "auto",
        "true: the divergence and the weights' entropies from one compiled pass (eakd.losses.fused; "
        "built-in divergences and weightings); false: eager; auto: compiled where faster (a built-in "
        "divergence and weighting, chunks past eakd.losses.fused_rule.AUTO_MIN_NUMEL, torch.compile working)",
    )

    def __post_init__(self) -> None:
        types = {"divergence": str, "weight_level": str, "weight_norm": str, "ignore_index": int}
        for name, kind in types.items():
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
        self.policy()  # unknown policy names and bad tau / h_ub fail here, not mid-training
        check_fused(self.fused)
        reason = self.unfusable()
        if self.fused is True and reason is not None:
            raise ValueError(reason)

    def unfusable(self) -> str | None:
        """Why these settings have no compiled pass, or None when they have one."""
        policy = self.policy()
        if policy is not None and policy.rule is None:
            return f"fused needs a built-in weighting, not the custom policy {policy.name!r}"
        if not hasattr(get_loss(self.divergence), "on_log_probs"):
            return (
                f"fused needs a divergence with a log-probability form (register_divergence), "
                f"not {self.divergence!r}"
            )
        return None

    def compiled(self, numel: int) -> bool:
        """Whether a chunk of ``numel`` logits takes the compiled pass (``fused_rule.use_fused``)."""
        return use_fused(self.fused, self.unfusable() is None, numel)

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

    def divergence_fn(self, defer: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(student logits (..., V), teacher logits (..., V)) -> (...) per-token divergence, settings and
        temperature bound; ``defer`` passed on to a divergence that takes it (``eakd.checks``)."""
        fn, kw = get_loss(self.divergence), self.divergence_settings()
        params = inspect.signature(fn).parameters
        if "temperature" in params:
            kw["temperature"] = self.temperature
        if "defer" in params:
            kw["defer"] = defer
        return lambda zs, zt: fn(zs, zt, **kw)


@dataclass
class GenerationSettings:
    """Where each training micro-batch's responses come from, in GKD's terms (TRL's ``GKDTrainer``): with
    probability ``lmbda`` the student generates them from the batch's prompts (on-policy), else the
    teacher does when ``seq_kd``, else they are the dataset's; the loss then weighs the new response
    tokens (``eakd.llm.onpolicy``). Checked when built (ValueError): lmbda in [0, 1], max_new_tokens >= 1,
    gen_temperature >= 0, gen_top_p in (0, 1], gen_top_k >= 0."""

    lmbda: float = setting(
        0.0,
        "the fraction of micro-batches whose responses the student generates (on-policy data), drawn per "
        "micro-batch from the run's seed and step (reproducible, resumable); 0: never",
        arm=True,
    )
    seq_kd: bool = setting(
        False,
        "the teacher generates the responses of the batches the student does not (sequence-level KD)",
        arm=True,
    )
    max_new_tokens: int = setting(128, "the most tokens a generated response has (TRL's default)", arm=True)
    gen_temperature: float = setting(
        0.9,
        "the sampling temperature of generated responses (TRL GKD's temperature; 0: greedy); the "
        "divergence's temperature is `temperature`",
        arm=True,
    )
    gen_top_p: float = setting(1.0, "nucleus sampling of generated responses (1: off)", arm=True)
    gen_top_k: int = setting(0, "top-k sampling of generated responses (0: off)", arm=True)

    def __post_init__(self) -> None:
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {self.lmbda}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.gen_temperature) and self.gen_temperature >= 0):
            raise ValueError(f"gen_temperature must be finite, >= 0 (0: greedy), got {self.gen_temperature}")
        if not 0.0 < self.gen_top_p <= 1.0:
            raise ValueError(f"gen_top_p must be in (0, 1], got {self.gen_top_p}")
        if self.gen_top_k < 0:
            raise ValueError(f"gen_top_k must be >= 0 (0: off), got {self.gen_top_k}")

    @classmethod
    def of(cls, config: Any) -> GenerationSettings:
        """The generation settings held by ``config`` (an ``EAKDConfig``, or any object with them)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    def generates(self) -> bool:
        """Whether any batch's responses are generated (then the teacher must run online: a cache holds
        it on the dataset's responses only)."""
        return self.lmbda > 0 or self.seq_kd


class TokenLossOutput(NamedTuple):
    """loss: 0-dim, differentiable. kd, ce: 0-dim detached normalised terms before kd_weight/ce_weight.
    weights: (N,) detached per-token weights (0 at ignored tokens) or None when unweighted.
    per_token: (N,) detached unweighted divergence per token (0 at ignored tokens). N = B*T rows.
    h_t, h_s: (N,) teacher and student entropies in nats at the policy's tau, the ones the weights were
    computed from (0 at ignored tokens), or None when the policy uses none (unweighted, uniform, custom).
    invalid: (len(INPUT_CHECKS),) bool, the input checks deferred to the device (a loss called with
    ``defer=True``; the values computed from a flagged input are not meaningful), or None when every
    input check ran on the host."""

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
        sync per term; a loss called with ``defer=True`` skips it and reports ``flags()``)."""
        if self.weights is not None:
            check_finite("the loss's weights", self.weights)
        check_finite("the loss's kd term", self.kd)
        check_finite("the loss's ce term", self.ce)
        return self
