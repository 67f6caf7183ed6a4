"""``DistillLoss``: one module that adds any weight policy to any registered distillation loss."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from eakd.checks import check_nonnegative, check_positive, nonfinite
from eakd.losses.fused import fused_weighted, unfusable
from eakd.losses.fused_rule import Fused, check_fused, use_fused
from eakd.losses.logit import cross_entropy, linear_warmup
from eakd.losses.reduce import weighted_mean
from eakd.losses.registry import get_loss
from eakd.weighting import Policy, check_weight_norm, get_policy, normalise_weights, standardize

# what a loss is called with (those its signature names); defer: whether its value checks wait (eakd.checks)
INPUTS = ("student_logits", "teacher_logits", "target", "student_feats", "teacher_feats", "defer")


def _accepted(fn: Any) -> set[str]:
    params = inspect.signature(fn).parameters
    return {n for n in INPUTS if n in params}


def _check_settings(method: str, loss: Any, hparams: dict[str, Any]) -> None:
    """The loss's settings (a function's non-input parameters, a module's constructor arguments) against
    ``hparams``: unknown or missing names, and temperatures that are not finite and > 0."""
    params = inspect.signature(loss).parameters
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    settings = {n: p for n, p in params.items() if n not in INPUTS and p.kind not in variadic}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in hparams if k in INPUTS or (k not in settings and not takes_any))
    if unknown:
        raise ValueError(f"loss {method!r} takes no setting(s) {unknown}; it takes {sorted(settings)}")
    missing = sorted(n for n, p in settings.items() if p.default is p.empty and n not in hparams)
    if missing:
        raise ValueError(f"loss {method!r} needs the setting(s) {missing}")
    if not isinstance(hparams.get("temperature"), torch.Tensor | None):
        check_positive(f"loss {method!r} setting 'temperature'", hparams["temperature"])
    for t in hparams.get("extra_temperatures", ()):
        check_positive(f"loss {method!r} setting 'extra_temperatures'", t)


class DistillLoss(nn.Module):
    """Weighted distillation loss for a training loop; returns a dict of named, reduced terms.

    method: a registered loss name ("kd", "dkd", ...). weighting: a policy name ("ea", "er", "base",
    "interact", "inverse", "uniform", "none") or a callable ``(student_logits, teacher_logits, mask)``.
    tau / h_ub: settings of the policy (None = the policy's own default: EA tau 3, ER tau 4, h_ub ln K).
    entropy_on: "raw" (default) or "standardized" logits for the entropies. standardize_logits: apply logit
    standardisation (LS) to both logits before a logit loss. kd_weight, ce_weight: outer loss weights
    (ce_weight > 0 adds the hard-label cross-entropy, never reweighted: ``eakd.losses.cross_entropy``, 0
    for a batch whose targets are all -100). warmup_epochs: linear warm-up of
    the distillation terms (DKD, ReviewKD). weight_norm: "none" (default, the paper's unnormalised
    weights) or "mean" (the weights divided by their mean over the batch's valid samples, so the loss keeps
    KD's scale and only the emphasis changes; an extension, ``normalise_weights``). Remaining keyword
    arguments go to the loss (its temperature, alpha, beta, ...) or, for a loss with learnable parts, to
    its constructor. sync_checks: see below. fused: True computes the loss and the policy's entropies in
    one compiled pass over each logit row (``eakd.losses.fused``: torch.compile, compiled on the first
    call; same values, gradients and diagnostics as the eager path, less time; the entropies share the
    loss's exps when tau / temperature is 1 or a small fraction such as the paper's 3 / 4); methods "kd"
    and "dkd" with a built-in policy and a float temperature only, anything else is refused here. False:
    the eager path. "auto" (default): the compiled pass where it is faster, i.e. for such settings when
    the logits hold at least ``eakd.losses.fused_rule.AUTO_MIN_NUMEL`` elements and torch.compile works here,
    else eager (``use_fused``).

    Call with student_logits (N, K), teacher_logits (N, K), and target (N,), student_feats,
    teacher_feats, epoch where needed (a loss module with ``set_epoch``, such as CTKD's curriculum, is
    advanced to ``epoch`` on each call). After a call, ``self.last`` holds detached diagnostics of it, each
    (N,) or None: ``weights``; ``h_t`` and ``h_s``, the entropies in nats the policy computed (at its tau,
    on standardised logits with ``entropy_on="standardized"``); ``per_sample``, the unweighted per-sample
    distillation loss. ``self.policy`` is the bound policy (its ``tau``, ``h_ub``, ``standardized``).

    Every setting is checked here, at construction (ValueError / TypeError naming it): the policy's
    (``get_policy``), ``weight_norm``, the loss's (unknown or missing names, temperatures finite and > 0),
    the outer weights. Inputs are checked on each call: shapes, devices, K >= 1 classes, and finiteness.

    Finiteness contract. Checked are the weights (N,) and every returned (0-dim) term: a NaN or inf in an
    input that reaches the loss is caught at O(N) cost, never with another pass over the (N, K) logits.
    ``sync_checks=True`` (default): a non-finite value raises ValueError in the call, naming the term;
    the checks read values back to the host (device syncs). ``sync_checks=False`` (for training loops):
    no check syncs or raises (the losses and weights get ``defer=True``, ``eakd.checks``); a NaN
    or inf weight or input makes the returned terms non-finite, which the runner's guard
    (``eakd.engine.guard``) records on the device and reads at its logging steps.
    """

    def __init__(
        self,
        method: str = "kd",
        weighting: str | Policy | None = "ea",
        *,
        tau: float | None = None,
        h_ub: float | None = None,
        entropy_on: str = "raw",
        standardize_logits: bool = False,
        kd_weight: float = 1.0,
        ce_weight: float = 0.0,
        warmup_epochs: float = 0.0,
        weight_norm: str = "none",
        sync_checks: bool = True,
        fused: Fused = "auto",
        **hparams: Any,
    ) -> None:
        super().__init__()
        check_weight_norm(weight_norm)
        if entropy_on not in ("raw", "standardized"):
            raise ValueError(f"entropy_on must be 'raw' or 'standardized', got {entropy_on!r}")
        outer = {"kd_weight": kd_weight, "ce_weight": ce_weight, "warmup_epochs": warmup_epochs}
        for name, value in outer.items():
            check_nonnegative(name, value)
        self.method = method
        loss = get_loss(method)
        _check_settings(method, loss, hparams)
        if isinstance(loss, type) and issubclass(loss, nn.Module):
            self.module: nn.Module | None = loss(**hparams)
            self.fn: Any = self.module
            self.hparams: dict[str, Any] = {}
            self.inputs = _accepted(self.module.forward)
        else:
            self.module = None
            self.fn = loss
            self.hparams = hparams
            self.inputs = _accepted(loss)
        policy_kw: dict[str, Any] = {}
        if tau is not None:
            policy_kw["tau"] = tau
        if h_ub is not None:
            policy_kw["h_ub"] = h_ub
        if entropy_on == "standardized":
            policy_kw["standardized"] = True
        self.policy: Policy | None = get_policy(weighting, **policy_kw)
        self.weighting = weighting if isinstance(weighting, str) or weighting is None else "callable"
        check_fused(fused)
        reason = unfusable(method, self.policy, hparams)
        if fused is True and reason is not None:
            raise ValueError(reason)
        self.fused, self.fusable = fused, reason is None
        self.standardize_logits = standardize_logits
        self.kd_weight = kd_weight
        self.ce_weight = ce_weight
        self.warmup_epochs = warmup_epochs
        self.weight_norm = weight_norm
        self.sync_checks = sync_checks
        self.last: dict[str, torch.Tensor | None] = {}

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor | None = None,
        student_feats: Any = None,
        teacher_feats: Any = None,
        epoch: float | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        out = self._terms(student_logits, teacher_logits, target, student_feats, teacher_feats, epoch, mask)
        if not self.sync_checks:
            return out
        weights = self.last["weights"]
        values = out if weights is None else {"weights": weights, **out}
        is_bad = torch.stack([nonfinite(v) for v in values.values()]).tolist()  # one host read for all
        bad = [name for name, b in zip(values, is_bad, strict=True) if b]
        if bad:
            raise ValueError(
                f"{self.method} loss: {' and '.join(bad)} non-finite (NaN or inf); check the student and "
                "teacher inputs and the weight policy"
            )
        return out

    def _terms(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor | None,
        student_feats: Any,
        teacher_feats: Any,
        epoch: float | None,
        mask: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The reduced terms of one call (value checks deferred unless ``sync_checks``); sets ``last``."""
        defer = not self.sync_checks
        teacher_logits = teacher_logits.detach()
        if epoch is not None and hasattr(self.module, "set_epoch"):  # e.g. CTKD's reversal curriculum
            self.module.set_epoch(epoch)
        if use_fused(self.fused, self.fusable, student_logits.numel()):
            weighted, raw = fused_weighted(
                self.policy, self.method, student_logits, teacher_logits, target, mask,
                self.standardize_logits, self.hparams, defer,
            )  # fmt: skip
        else:
            policy = self.policy
            weighted = None
            if policy is not None:
                weighted = policy.compute(student_logits, teacher_logits, mask, defer=defer)
            raw = self._eager(student_logits, teacher_logits, target, student_feats, teacher_feats, defer)
        weights = None if weighted is None else normalise_weights(weighted.weights, mask, self.weight_norm)
        terms = raw if isinstance(raw, dict) else {"kd": raw}
        scale = self.kd_weight * (1.0 if epoch is None else linear_warmup(epoch, self.warmup_epochs))
        out: dict[str, torch.Tensor] = {}
        per_sample = None
        for name, values in terms.items():
            if values.dim() == 0:  # batch-level term (e.g. MLKD class correlation): not reweighted
                out[f"loss_{name}"] = scale * values
                continue
            per_sample = values if per_sample is None else per_sample + values
            out[f"loss_{name}"] = scale * weighted_mean(values, weights, mask, defer=defer)
        if self.ce_weight > 0:
            if target is None:
                raise ValueError("ce_weight > 0 needs the target labels")
            out["loss_ce"] = self.ce_weight * cross_entropy(student_logits, target)
        self.last = {
            "weights": weights,
            "h_t": None if weighted is None else weighted.h_t,
            "h_s": None if weighted is None else weighted.h_s,
            "per_sample": None if per_sample is None else per_sample.detach(),
        }
        return out

    def _eager(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor | None,
        student_feats: Any,
        teacher_feats: Any,
        defer: bool,
    ) -> Any:
        """The registered loss's output on the (optionally standardised) inputs it accepts."""
        zs, zt = student_logits, teacher_logits
        if self.standardize_logits:
            zs, zt = standardize(zs), standardize(zt)
        given = {
            "student_logits": zs,
            "teacher_logits": zt,
            "target": target,
            "student_feats": student_feats,
            "teacher_feats": teacher_feats,
            "defer": defer,
        }
        missing = [n for n in self.inputs if given[n] is None]
        if missing:
            raise ValueError(f"loss {self.method!r} needs {missing}, which were not given")
        return self.fn(**{n: given[n] for n in self.inputs}, **self.hparams)

    @classmethod
    def from_config(cls, d: Any, sync_checks: bool = True) -> DistillLoss | None:
        """The loss a config's ``distill`` section describes (fields as ``eakd.engine.config.DistillConfig``):
        None for method "none". Policies that use no entropies ("none", "uniform") ignore the section's
        tau, h_ub and entropy_on, so one config gives the baseline by switching ``weighting``.
        sync_checks: as in the constructor (False in a training loop that reads the flags itself)."""
        if d.method == "none":
            return None
        off = d.weighting in ("none", "uniform")
        return cls(
            d.method,
            d.weighting,
            tau=None if off else d.tau,
            h_ub=None if off else d.h_ub,
            entropy_on="raw" if off else d.entropy_on,
            standardize_logits=d.standardize_logits,
            kd_weight=d.kd_weight,
            ce_weight=d.ce_weight,
            warmup_epochs=d.warmup_epochs,
            weight_norm=d.weight_norm,
            sync_checks=sync_checks,
            fused=d.fused,
            **d.hparams,
        )
