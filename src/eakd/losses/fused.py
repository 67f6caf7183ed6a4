"""Fused logit losses: the per-sample loss and both entropies from one read of each logit row, compiled.

The eager losses (``eakd.losses.logit``, ``eakd.losses.token``) and ``Policy.compute`` are the reference;
these functions give the same values and gradients with fewer passes over the (N, K) logits. Each row is
shifted by its max once and exponentiated: the log-sum-exp (the loss) and the entropy
H = log s - sum(e * d) / s (d = z - max, e = exp(d), s = sum(e)) come from the same ``e``. The entropies
at a temperature tau other than the loss's T reuse the same shift, d * T / tau (its max is 0 again), so
every term is read off one pass over each row. When tau == T the entropies cost no further exp; when
tau / T = a / b with small integers (tau 3 / T 4, tau 2 / T 1: ``shared_powers``), one exp
u = exp(d / a) gives both, exp(d) = u^a and exp(d T / tau) = u^b, so EA still costs one exp per logit;
otherwise one more exp per logit. DKD shifts by the non-target max (its non-target softmax must not
underflow when the target dominates) and takes the target's share apart, at T and at tau alike. Only
entropies of differently standardised logits than the loss's (``entropy_on`` vs ``standardize_logits``)
take a pass of their own. A teacher entropy already known (the LLM teacher cache's) is taken as given
and not recomputed.

The kernels are compiled with ``torch.compile`` (inductor, dynamic shapes: a new batch size or class count
does not recompile) on first use, one compiled callable per setting combination, cached. Math is float32
for any input dtype; the teacher is detached (gradients reach the student logits only). Value checks on
the results follow ``eakd.checks`` (eager, or no host read with ``defer=True``), as in the eager losses.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import torch

from eakd.checks import (
    check_finite,
    check_logit_pair,
    check_logits,
    check_positive,
    check_same_device,
    check_same_leading,
)
from eakd.losses.logit import _check_target
from eakd.losses.registry import get_loss
from eakd.losses.token import check_coefficient
from eakd.weighting import Policy, Weighted, standardize

Tensor = torch.Tensor
FUSED_LOGIT = ("kd", "dkd")
LOGIT_SETTINGS = {"kd": {"temperature": 4.0}, "dkd": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}}

MAX_POWER = 4  # u^a and u^b by at most two squarings: cheaper than a second exp
Powers = tuple[int, int] | None

_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}


def shared_powers(temperature: float, tau: float | None) -> Powers:
    """(a, b) with tau / T = a / b, both <= ``MAX_POWER``, when one exp can serve both temperatures
    ((1, 1): tau == T); None when tau is None or the ratio is not such a fraction."""
    if tau is None:
        return None
    ratio = Fraction(tau / temperature).limit_denominator(MAX_POWER)
    if abs(float(ratio) - tau / temperature) > 1e-12 * (tau / temperature) or ratio.numerator > MAX_POWER:
        return None
    return ratio.numerator, ratio.denominator


def _compiled(kernel: Callable[..., Any], key: tuple[Any, ...]) -> Callable[..., Any]:
    """``kernel`` compiled once per static-setting ``key``. Each key gets its own copy of the function's
    code object, so dynamo's per-code recompile limit never makes one setting fall back to eager."""
    fn = _COMPILED.get((kernel.__name__, *key))
    if fn is None:
        copy = types.FunctionType(kernel.__code__.replace(), kernel.__globals__, kernel.__name__)
        fn = _COMPILED[(kernel.__name__, *key)] = torch.compile(copy, dynamic=True)
    return fn


def _entropy_from(d: Tensor, e: Tensor, s: Tensor) -> Tensor:
    """Detached entropy in nats of softmax(z) from shifted logits d = z - max (N, K), e = exp(d) and
    s = sum(e) (N,): log s - sum(e * d) / s."""
    d, e, s = d.detach(), e.detach(), s.detach()
    return s.log() - (e * d).sum(dim=-1) / s


def _entropy_at(z: Tensor, tau: float, standardized: bool) -> Tensor:
    """Detached entropy in nats of softmax(z / tau) (N,) for float32 z (N, K), of standardize(z) if asked:
    a pass of its own (``_parts`` at T = tau)."""
    z = z.detach()
    h = _parts(standardize(z) if standardized else z, tau, tau, (1, 1))[3]
    assert h is not None  # a tau is given
    return h


def _power(u: Tensor, n: int) -> Tensor:
    """u^n for 1 <= n <= ``MAX_POWER`` by multiplications (inductor vectorises them; pow it may not)."""
    sq = u * u
    return {1: u, 2: sq, 3: sq * u, 4: sq * sq}[n]


def _exps(d: Tensor, temperature: float, tau: float | None, powers: Powers) -> tuple[Tensor, Tensor | None]:
    """exp(d) and, with a tau, the detached exp(d T / tau) of shifted logits d (N, K) (<= 0 where not
    -inf): with ``powers`` (a, b) both from one exp u = exp(d / a), exp(d) = u^a and exp(d T / tau) = u^b;
    without, a second exp."""
    if powers is None:
        e = d.exp()
        return e, None if tau is None else (d.detach() * (temperature / tau)).exp()
    a, b = powers
    u = (d / a).exp() if a > 1 else d.exp()
    e = _power(u, a)
    if tau is None:
        return e, None
    return e, e.detach() if a == b else _power(u.detach(), b)


def _parts(
    x: Tensor, temperature: float, tau: float | None, powers: Powers
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """d = x / T - max (max detached), e = exp(d), s = sum(e) (N,) of float32 x (N, K) and, with a tau,
    the detached entropy of softmax(x / tau) from the same shift: d T / tau (``_exps``)."""
    z = x / temperature
    d = z - z.detach().amax(dim=-1, keepdim=True)
    e, e_tau = _exps(d, temperature, tau, powers)
    s = e.sum(dim=-1)
    if tau is None or e_tau is None:
        return d, e, s, None
    return d, e, s, _entropy_from(d * (temperature / tau), e_tau, e_tau.sum(dim=-1))


def _kl_kernel(
    zs: Tensor, zt: Tensor, temperature: float, scale: float, tau: float | None, powers: Powers,
    std_loss: bool, std_entropy: bool, teacher_entropy: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """scale * KL(softmax(zt/T) || softmax(zs/T)) per row, = sum(e_t * (d_t - d_s)) / s_t - log s_t + log s_s,
    and the entropies at tau (from the loss's shift, ``_parts``; of other logits, their own pass)."""
    xs, xt = zs.float(), zt.float()
    ls, lt = (standardize(xs), standardize(xt)) if std_loss else (xs, xt)
    tau_here = tau if std_loss == std_entropy else None
    ds, _, ss, h_s = _parts(ls, temperature, tau_here, powers)
    dt, et, st, h_t = _parts(lt, temperature, tau_here if teacher_entropy else None, powers)
    loss = ((et * (dt - ds)).sum(dim=-1) / st - st.log() + ss.log()) * scale
    if tau is not None and tau_here is None:
        h_s = _entropy_at(xs, tau, std_entropy)
        h_t = _entropy_at(xt, tau, std_entropy) if teacher_entropy else None
    return loss, h_s, h_t


def _log_binary(z_gt: Tensor, m: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """log p(target), log p(non-target) (N,) of a softmax from the target's scaled logit z_gt (N,), the
    scaled non-target max m (N,) and the non-target sum s (N,) of exp(z - m) (>= 1, no underflow)."""
    lse_other = m + s.log()
    lse = torch.logaddexp(z_gt, lse_other)
    return z_gt - lse, lse_other - lse


def _split(
    x: Tensor, gt: Tensor, temperature: float, tau: float | None, powers: Powers
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """DKD's pieces of float32 logits x (N, K) with target mask gt: log p(target), log p(non-target) (N,)
    of softmax(x / T), d = (x - m) / T with m the non-target max (detached), e = exp(d) (0 at the target),
    s = sum(e) (N,); with a tau, the detached entropy of softmax(x / tau) from the same shift (``_exps``)."""
    x_gt = torch.where(gt, x, 0.0).sum(dim=-1)
    m = torch.where(gt, float("-inf"), x).detach().amax(dim=-1, keepdim=True)
    d = (x - m) / temperature
    e, e_tau = _exps(torch.where(gt, float("-inf"), d), temperature, tau, powers)
    s = e.sum(dim=-1)
    log_gt, log_other = _log_binary(x_gt / temperature, m.squeeze(-1) / temperature, s)
    if tau is None or e_tau is None:
        return log_gt, log_other, d, e, s, None
    s_tau = e_tau.sum(dim=-1)
    binary_tau = _log_binary(x_gt.detach() / tau, m.squeeze(-1) / tau, s_tau)
    h = _dkd_entropy(*binary_tau, d.detach() * (temperature / tau), e_tau, s_tau)
    return log_gt, log_other, d, e, s, h


def _dkd_entropy(log_gt: Tensor, log_other: Tensor, d: Tensor, e: Tensor, s: Tensor) -> Tensor:
    """Detached entropy of the full softmax from ``_split``'s pieces at one temperature: -p_g log p_g -
    sum_{k != g} p_k log p_k, where p_k = e_k p_other / s and log p_k = d_k + log p_other - log s."""
    log_gt, log_other, d, e, s = (x.detach() for x in (log_gt, log_other, d, e, s))
    p_other = log_other.exp()
    return -log_gt.exp() * log_gt - p_other / s * (e * d).sum(dim=-1) - p_other * (log_other - s.log())


def _dkd_kernel(
    zs: Tensor, zt: Tensor, target: Tensor, temperature: float, alpha: float, beta: float,
    tau: float | None, powers: Powers, std_loss: bool, std_entropy: bool, teacher_entropy: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """DKD per row (alpha * TCKD + beta * NCKD) * T^2, as ``dkd_loss``, and the entropies at tau (from the
    loss's shift, ``_split``; of other logits, their own pass)."""
    xs, xt = zs.float(), zt.float()
    ls, lt = (standardize(xs), standardize(xt)) if std_loss else (xs, xt)
    gt = torch.arange(xs.shape[-1], device=xs.device) == target.unsqueeze(-1)
    tau_here = tau if std_loss == std_entropy else None
    gs, os_, ds, _, ss, h_s = _split(ls, gt, temperature, tau_here, powers)
    g_t, o_t, dt, et, st, h_t = _split(lt, gt, temperature, tau_here if teacher_entropy else None, powers)
    tckd = g_t.exp() * (g_t - gs) + o_t.exp() * (o_t - os_)
    nckd = (et * (dt - ds)).sum(dim=-1) / st - st.log() + ss.log()
    loss = (alpha * tckd + beta * nckd) * temperature**2
    if tau is not None and tau_here is None:
        h_s = _entropy_at(xs, tau, std_entropy)
        h_t = _entropy_at(xt, tau, std_entropy) if teacher_entropy else None
    return loss, h_s, h_t


def _token_kernel(
    zs: Tensor, zt: Tensor | None, log_p: Tensor | None, divergence: Callable[..., Tensor],
    temperature: float, tau: float | None, powers: Powers, teacher_entropy: bool, settings: dict[str, float],
) -> tuple[Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """A token divergence (its math on log-probabilities, ``on_log_probs``) per row from the student logits
    and the teacher's logits or float32 log-probabilities at T, and the entropies at tau."""
    ds, _, ss, h_s = _parts(zs.float(), temperature, tau, powers)
    log_q = ds - ss.log().unsqueeze(-1)
    h_t = None
    if zt is not None:
        dt, _, st, h_t = _parts(zt.float(), temperature, tau if teacher_entropy else None, powers)
        log_p = dt - st.log().unsqueeze(-1)
    assert log_p is not None
    loss = divergence(log_q, log_p, **settings)
    return loss, h_s, h_t


def _rows(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.reshape(-1, x.shape[-1])


def _settings(name: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"fused {name!r} takes no setting(s) {unknown}; it takes {sorted(defaults)}")
    return {**defaults, **given}


def _check_temperatures(temperature: Any, tau: float | None) -> None:
    if isinstance(temperature, Tensor):
        raise TypeError("fused losses take a float temperature, not a tensor (use the eager loss for CTKD)")
    check_positive("temperature", temperature)
    if tau is not None:
        check_positive("tau", tau)


def fused_logit_terms(
    method: str,
    zs: Tensor,
    zt: Tensor,
    target: Tensor | None,
    *,
    tau: float | None,
    standardized: bool = False,
    standardize_logits: bool = False,
    h_t: Tensor | None = None,
    defer: bool = False,
    **loss_settings: Any,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-sample KD or DKD loss and the entropies (nats) of student and teacher at ``tau``, fused.

    zs, zt: logits (..., K) in any float dtype (zt detached); target (...) int64 for DKD. tau: entropy
    temperature (None: no entropies). standardized: entropies of LS-standardised logits (``entropy_on``);
    standardize_logits: the loss on LS-standardised logits. h_t: the teacher's entropies when already
    known (...), skipping its pass. loss_settings: ``kd_loss``'s / ``dkd_loss``'s (temperature, alpha,
    beta). defer: as in ``kd_loss``. Returns (loss (...) float32, h_s (...) | None, h_t (...) | None), the
    same values as the eager loss and ``Policy.entropies``.
    """
    if method not in FUSED_LOGIT:
        raise ValueError(f"fused losses exist for methods {list(FUSED_LOGIT)}, got {method!r}")
    s = _settings(method, loss_settings, LOGIT_SETTINGS[method])
    _check_temperatures(s["temperature"], tau)
    check_logit_pair(zs, zt)
    lead = zs.shape[:-1]
    teacher_entropy = tau is not None and h_t is None
    powers = shared_powers(s["temperature"], tau) if standardized == standardize_logits else None
    flags = (tau, powers, standardize_logits, standardized, teacher_entropy)
    if method == "kd":
        key = (s["temperature"], *flags)
        kernel = _compiled(_kl_kernel, key)
        loss, h_s, h_t2 = kernel(
            _rows(zs), _rows(zt.detach()), s["temperature"], s["temperature"] ** 2, *flags
        )
    else:
        if target is None:
            raise ValueError("loss 'dkd' needs ['target'], which were not given")
        _check_target(target, zs)
        key = (s["temperature"], s["alpha"], s["beta"], *flags)
        kernel = _compiled(_dkd_kernel, key)
        loss, h_s, h_t2 = kernel(
            _rows(zs), _rows(zt.detach()), target.reshape(-1), s["temperature"], s["alpha"], s["beta"], *flags
        )
    check_finite(f"{method.upper()} loss from the student and teacher logits", loss, defer=defer)
    return _shaped(loss, h_s, h_t2, h_t, lead)


def _shaped(
    loss: Tensor, h_s: Tensor | None, computed_h_t: Tensor | None, given_h_t: Tensor | None, lead: torch.Size
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The kernel's (N,) results back in the inputs' leading shape; a given teacher entropy as float32."""
    h_t = computed_h_t if given_h_t is None else given_h_t.detach().float().reshape(-1)
    if h_s is None:
        h_t = None
    return tuple(None if x is None else x.reshape(lead) for x in (loss, h_s, h_t))  # type: ignore[return-value]


def fused_token_terms(
    divergence: str,
    zs: Tensor,
    zt: Tensor | None,
    *,
    temperature: float,
    tau: float | None,
    h_t: Tensor | None = None,
    teacher_log_probs: Tensor | None = None,
    defer: bool = False,
    **divergence_settings: Any,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-token divergence (a registered loss with a log-probability form, ``on_log_probs``: the built-in
    fkl, rkl, jsd, skl, srkl, tvd of ``eakd.losses.token``) and the entropies (nats) of student and teacher
    at ``tau``, fused.

    zs: student logits (..., V); zt: teacher logits (..., V), or None with ``teacher_log_probs`` (..., V),
    the teacher's float32 log-probabilities at ``temperature`` (e.g. a top-k cache's ``log_probs``), and
    then ``h_t`` is needed when tau is set. h_t (...): the teacher's entropies at tau when already known
    (the teacher cache's ``entropy``): its pass is skipped. divergence_settings: the divergence's (beta for
    jsd, alpha for skl / srkl). defer: as in ``kd_loss``. Returns (loss (...) float32, h_s | None,
    h_t | None); tau None: no entropies.
    """
    math_fn = getattr(get_loss(divergence), "on_log_probs", None)
    if math_fn is None:
        raise ValueError(f"loss {divergence!r} has no log-probability form (register_divergence) to fuse")
    params = inspect.signature(math_fn).parameters
    defaults = {n: p.default for n, p in params.items() if n not in ("log_q", "log_p")}
    settings = _settings(divergence, divergence_settings, defaults)
    for name, value in settings.items():
        check_coefficient(name, value)
    _check_temperatures(temperature, tau)
    lead = zs.shape[:-1]
    if zt is not None:
        check_logit_pair(zs, zt)
    elif teacher_log_probs is None:
        raise ValueError("fused_token_terms needs the teacher's logits zt or its teacher_log_probs")
    else:
        check_logits("student logits", zs)
        if teacher_log_probs.shape != zs.shape:
            raise ValueError(
                f"teacher_log_probs {tuple(teacher_log_probs.shape)} != logits {tuple(zs.shape)}"
            )
        check_same_device("student logits", zs, "teacher_log_probs", teacher_log_probs)
        if tau is not None and h_t is None:
            raise ValueError(
                "fused_token_terms: teacher_log_probs with a tau needs the teacher entropies h_t"
            )
    if h_t is not None:
        check_same_leading("h_t", h_t, zs[..., 0])
    teacher_entropy = tau is not None and h_t is None
    powers = shared_powers(temperature, tau)
    if divergence == "fkl" and zt is not None:  # forward KL is KD without T^2: the KD kernel
        flags = (tau, powers, False, False, teacher_entropy)
        kernel = _compiled(_kl_kernel, (temperature, *flags))
        loss, h_s, h_t2 = kernel(_rows(zs), _rows(zt.detach()), temperature, 1.0, *flags)
    else:
        key = (divergence, temperature, tau, powers, teacher_entropy, tuple(sorted(settings.items())))
        kernel = _compiled(_token_kernel, key)
        zt_rows = None if zt is None else _rows(zt.detach())
        log_p = None if teacher_log_probs is None else _rows(teacher_log_probs.detach().float())
        loss, h_s, h_t2 = kernel(
            _rows(zs), zt_rows, log_p, math_fn, temperature, tau, powers, teacher_entropy, settings
        )
    check_finite(f"{divergence} loss from the student and teacher logits", loss, defer=defer)
    return _shaped(loss, h_s, h_t2, h_t, lead)


def unfusable(method: str, policy: Policy | None, hparams: dict[str, Any]) -> str | None:
    """Why ``DistillLoss``'s settings have no compiled pass (a fused method, a built-in policy, a float
    temperature are needed), or None when they have one."""
    if method not in FUSED_LOGIT:
        return f"fused=True supports method {' or '.join(map(repr, FUSED_LOGIT))}, got {method!r}"
    if policy is not None and policy.rule is None:
        return (
            f"fused=True needs a built-in weighting (ea, er, base, interact, inverse, uniform, none), "
            f"got the custom policy {policy.name!r}"
        )
    if isinstance(hparams.get("temperature"), Tensor):
        return "fused=True needs a float temperature setting, not a tensor (CTKD: use fused=False)"
    return None


def fused_weighted(
    policy: Policy | None,
    method: str,
    zs: Tensor,
    zt: Tensor,
    target: Tensor | None,
    mask: Tensor | None,
    standardize_logits: bool,
    hparams: dict[str, Any],
    defer: bool,
) -> tuple[Weighted | None, Tensor]:
    """``DistillLoss``'s fused path: (the policy's weights and entropies | None, the per-sample loss), the
    entropies from the loss's pass (``fused_logit_terms``) and the weights by ``Policy.from_entropies``;
    defer: as in ``kd_loss``."""
    uses_entropy = policy is not None and policy.rule is not None and policy.rule.tau is not None
    tau = policy.tau if uses_entropy and policy is not None else None
    standardized = policy is not None and policy.standardized
    loss, h_s, h_t = fused_logit_terms(
        method, zs, zt, target, tau=tau, standardized=standardized, standardize_logits=standardize_logits,
        defer=defer, **hparams,
    )  # fmt: skip
    if policy is None:
        return None, loss
    if h_t is None:  # no entropies (uniform)
        return policy.compute(zs, zt, mask, defer=defer), loss
    return Weighted(policy.from_entropies(h_s, h_t, zs.shape[-1], mask, defer=defer), h_s, h_t), loss
