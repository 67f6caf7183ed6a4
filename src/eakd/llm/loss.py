"""Token-level EA-KD loss for causal LMs: from logits, or chunked and fused with the lm_head.

Both paths compute, per valid token n (labels != ignore_index),

    loss = kd_weight * sum_n w_n * D(p_n || q_n) / denom + ce_weight * sum_n CE_n / denom

with D a token divergence of ``eakd.losses.token`` at temperature T (p teacher, q student), w_n the
detached weight of a policy of ``eakd.weighting`` (EA by default, H_ub = ln V; per token, or per sequence
= the mean over the sequence's valid tokens), CE the hard-label cross-entropy of the student at T = 1,
and denom = ``num_items_in_batch`` when given (valid tokens over all gradient-accumulation micro-batches)
else the valid tokens of this call. The chunked path never materialises the (B*T, V) logits: it runs
``chunk_size`` rows at a time, computes the gradients w.r.t. the hidden states, lm_head weight and bias in
the forward pass, and scales them by the incoming gradient in the backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from eakd.checks import check_finite, check_positive
from eakd.losses.reduce import weighted_mean
from eakd.losses.token import TOKEN_DIVERGENCES, token_mask
from eakd.weighting import Policy, entropy, get_policy

WEIGHT_LEVELS = ("token", "sequence")


@dataclass(frozen=True)
class TokenLossSettings:
    """What to compute per token. divergence: fkl, rkl, jsd, skl, srkl, tvd. beta: JSD's beta; alpha: the
    skew of skl/srkl. temperature: of the divergence. weighting: a policy name of ``eakd.weighting`` ("ea",
    "er", "base", "interact", "inverse", "uniform") or None for the unweighted baseline; tau, h_ub: its
    settings (None = the policy's default; h_ub None = ln V). weight_level: "token" or "sequence".
    kd_weight, ce_weight: outer weights of the distillation and hard-label terms."""

    divergence: str = "fkl"
    beta: float = 0.5
    alpha: float = 0.1
    temperature: float = 1.0
    weighting: str | None = "ea"
    tau: float | None = 2.0
    h_ub: float | None = None
    weight_level: str = "token"
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    ignore_index: int = -100

    def __post_init__(self) -> None:
        if self.divergence not in TOKEN_DIVERGENCES:
            known = ", ".join(sorted(TOKEN_DIVERGENCES))
            raise ValueError(f"unknown token divergence {self.divergence!r}; known: {known}")
        if self.weight_level not in WEIGHT_LEVELS:
            raise ValueError(f"weight_level must be one of {WEIGHT_LEVELS}, got {self.weight_level!r}")
        check_positive("temperature", self.temperature)
        self.policy()  # unknown policy names and bad tau / h_ub fail here, not mid-training

    def policy(self) -> Policy | None:
        """The bound weight policy, or None when unweighted."""
        kw = {k: v for k, v in (("tau", self.tau), ("h_ub", self.h_ub)) if v is not None}
        if self.weighting in ("uniform", None, "none"):
            kw = {}
        return get_policy(self.weighting, **kw)

    def entropy_pair(self, zs: torch.Tensor, zt: torch.Tensor | None, h_t: torch.Tensor | None = None):
        """(2, ...) detached teacher and student entropies at the entropy temperature (tau, else 1); the
        teacher's from its logits zt, or given as h_t (an offline cache's)."""
        tau = self.tau or 1.0
        if h_t is None:
            assert zt is not None
            h_t = entropy(zt.detach(), tau)
        return torch.stack([h_t.float(), entropy(zs.detach(), tau)])

    def divergence_fn(self) -> Any:
        """(log_q, log_p) -> (...) per-token divergence with beta/alpha bound."""
        fn = TOKEN_DIVERGENCES[self.divergence]
        if self.divergence == "jsd":
            return lambda lq, lp: fn(lq, lp, beta=self.beta)
        if self.divergence in ("skl", "srkl"):
            return lambda lq, lp: fn(lq, lp, alpha=self.alpha)
        return fn


class TokenLossOutput(NamedTuple):
    """loss: 0-dim, differentiable. kd, ce: 0-dim detached normalised terms before kd_weight/ce_weight.
    weights: (N,) detached per-token weights (0 at ignored tokens) or None when unweighted.
    per_token: (N,) detached unweighted divergence per token (0 at ignored tokens). N = B*T rows.
    entropies: (2, N) teacher and student entropies in nats at the entropy temperature (tau, else 1), 0 at
    ignored tokens, when asked for (``with_entropies=True``; diagnostics), else None."""

    loss: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    weights: torch.Tensor | None
    per_token: torch.Tensor
    entropies: torch.Tensor | None = None


def _denominator(mask: torch.Tensor, num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor:
    if num_items_in_batch is None:
        return mask.sum().clamp_min(1).float()
    return torch.as_tensor(num_items_in_batch, device=mask.device).float().clamp_min(1)


def _sequence_mean(weights: torch.Tensor, seq_ids: torch.Tensor) -> torch.Tensor:
    """Weights of valid tokens (M,) -> the mean weight of each token's sequence (M,); seq_ids (M,) int64."""
    n_seq = int(seq_ids.max()) + 1 if seq_ids.numel() else 0
    sums = torch.zeros(n_seq, device=weights.device).index_add_(0, seq_ids, weights)
    counts = torch.zeros(n_seq, device=weights.device).index_add_(0, seq_ids, torch.ones_like(weights))
    return (sums / counts.clamp_min(1))[seq_ids]


def _log_softmax(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 log_softmax(z / T) over the last dim, without the division's copy at T = 1."""
    z = z.float()
    return torch.log_softmax(z if temperature == 1.0 else z / temperature, dim=-1)


class TeacherTopK(NamedTuple):
    """An offline teacher (``eakd.llm.cache``) at the valid (labelled) positions, in row-major order.

    ids (M, k) int64: the teacher's top-k token ids per valid token. logprobs (M, k): their teacher
    log-probabilities at ``temperature`` (the distillation temperature). entropy (M,): the teacher's full
    entropy in nats at ``tau`` (the entropy temperature). vocab_size: the teacher's vocabulary V.
    tail_logmass (M,) or None: log of the teacher mass outside the top-k (exact, from the full logits;
    None: 1 - sum(top-k), which float rounding floors when the top-k hold nearly all the mass). That mass
    is spread evenly over the other V - k tokens.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    entropy: torch.Tensor
    vocab_size: int
    temperature: float
    tau: float
    tail_logmass: torch.Tensor | None = None

    def rows(self, i: int, j: int) -> TeacherTopK:
        """The cache of valid tokens i:j."""
        tail = None if self.tail_logmass is None else self.tail_logmass[i:j]
        return self._replace(
            ids=self.ids[i:j], logprobs=self.logprobs[i:j], entropy=self.entropy[i:j], tail_logmass=tail
        )

    def log_probs(self, vocab_size: int) -> torch.Tensor:
        """(M, vocab_size) float32 teacher log-probabilities rebuilt by ``topk_log_probs``."""
        return topk_log_probs(self.ids, self.logprobs, vocab_size, self.tail_logmass)


def topk_log_probs(
    ids: torch.Tensor, logprobs: torch.Tensor, vocab_size: int, tail_logmass: torch.Tensor | None = None
) -> torch.Tensor:
    """Full teacher log-probabilities (M, V) float32 from top-k ids/log-probs (M, k): the top-k entries
    as given, the remaining mass (exp(tail_logmass) (M,), else 1 - sum(top-k)) spread evenly over the other
    V - k tokens."""
    lp = logprobs.float()
    k = ids.shape[-1]
    if tail_logmass is None:
        tail_logmass = (1.0 - lp.double().exp().sum(-1)).clamp_min(1e-30).log().float()
    rest = tail_logmass.float() - math.log(max(vocab_size - k, 1))
    out = rest.unsqueeze(-1).expand(*lp.shape[:-1], vocab_size).clone()
    return out.scatter_(-1, ids.long(), lp)


def _check_topk(t: TeacherTopK, s: TokenLossSettings, rows: int, vocab: int) -> None:
    """A teacher cache must match the loss settings, the valid-token count and the vocabulary."""
    if t.ids.shape != t.logprobs.shape or t.ids.dim() != 2 or t.entropy.shape != t.ids.shape[:1]:
        raise ValueError(
            f"teacher cache shapes disagree: ids {tuple(t.ids.shape)}, logprobs {tuple(t.logprobs.shape)}, "
            f"entropy {tuple(t.entropy.shape)}; expected (M, k), (M, k), (M,)"
        )
    if t.tail_logmass is not None and t.tail_logmass.shape != t.entropy.shape:
        raise ValueError(f"teacher cache tail_logmass {tuple(t.tail_logmass.shape)} is not (M,)")
    if t.ids.shape[0] != rows:
        raise ValueError(
            f"the teacher cache has {t.ids.shape[0]} tokens but the batch has {rows} labelled tokens; "
            "was the cache written for this data, tokenizer and max_length?"
        )
    if t.vocab_size < vocab:
        raise ValueError(
            f"the teacher cache's vocabulary ({t.vocab_size}) is smaller than the loss's ({vocab})"
        )
    if abs(t.temperature - s.temperature) > 1e-6:
        raise ValueError(
            f"the teacher cache holds log-probs at temperature {t.temperature}, the loss uses {s.temperature}"
        )
    if s.weighting not in (None, "none", "uniform"):
        if not isinstance(s.weighting, str):
            raise ValueError("a teacher cache works with the built-in weight policies, not custom callables")
        if s.tau is None or abs(t.tau - s.tau) > 1e-6:
            raise ValueError(f"the teacher cache holds entropies at tau {t.tau}, the loss uses tau {s.tau}")
    if rows and int(t.ids.max()) >= vocab:
        raise ValueError(f"teacher cache token ids reach {int(t.ids.max())}, beyond the vocabulary {vocab}")


def _terms(
    zs: torch.Tensor,
    log_p: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    s: TokenLossSettings,
    denom: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of student rows (..., V) against teacher log-probs at T (..., V), with given detached weights
    (...): (total, kd, ce, per_token), float32."""
    mask = token_mask(labels, s.ignore_index)
    log_q = _log_softmax(zs, s.temperature)
    per_token = s.divergence_fn()(log_q, log_p)
    kd = weighted_mean(per_token, weights, mask, denominator=denom)
    total = s.kd_weight * kd
    ce = torch.zeros((), device=zs.device)
    if s.ce_weight > 0:
        log_q1 = log_q if s.temperature == 1.0 else _log_softmax(zs, 1.0)  # CE is at T = 1
        ce_tok = -log_q1.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        ce = weighted_mean(ce_tok, mask=mask, denominator=denom)
        total = total + s.ce_weight * ce
    return total, kd, ce, torch.where(mask, per_token.detach(), 0.0)


def _cached_weights(zs: torch.Tensor, h_t: torch.Tensor, policy: Policy, mask: torch.Tensor | None):
    """Weights of student rows (..., V) against a cached teacher entropy (...) (the entropy form of the
    built-in ``policy``, H_ub = ln V unless set)."""
    h_s = entropy(zs.detach(), policy.tau or 1.0)
    return policy.from_entropies(h_s, h_t, zs.shape[-1], mask)


def _align_vocab(v_student: int, v_teacher: int, vocab_size: int | None) -> int:
    """The common vocabulary size: rows beyond it are padding and are dropped from both sides."""
    if vocab_size is None:
        if v_student != v_teacher:
            raise ValueError(
                f"student and teacher vocabularies differ: student has {v_student}, teacher has "
                f"{v_teacher}; if they differ only by padding rows, pass vocab_size=len(tokenizer)"
            )
        return v_student
    if vocab_size > min(v_student, v_teacher):
        raise ValueError(
            f"vocab_size {vocab_size} exceeds the student ({v_student}) or teacher ({v_teacher}) vocabulary"
        )
    return vocab_size


def _check_labels(labels: torch.Tensor, rows: int, vocab: int, ignore_index: int) -> None:
    if labels.numel() != rows:
        raise ValueError(f"labels have {labels.numel()} positions, hidden states/logits have {rows} rows")
    valid = labels[labels != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= vocab):
        raise ValueError(f"labels must be in [0, {vocab}) or ignore_index={ignore_index}")


def distill_loss_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    settings: TokenLossSettings | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    vocab_size: int | None = None,
    with_entropies: bool = False,
    teacher_topk: TeacherTopK | None = None,
) -> TokenLossOutput:
    """The loss from materialised logits (B, T, V) (dense path; the reference of the chunked one).

    labels (B, T), already aligned with the logits (shifted for next-token prediction). The teacher is
    teacher_logits (B, T, V_t), or (teacher_logits None) an offline ``teacher_topk`` of the valid tokens.
    """
    s = settings or TokenLossSettings()
    if (teacher_logits is None) == (teacher_topk is None):
        raise ValueError("give either teacher_logits or teacher_topk (not both)")
    v_t = teacher_logits.shape[-1] if teacher_logits is not None else teacher_topk.vocab_size  # type: ignore[union-attr]
    v = _align_vocab(student_logits.shape[-1], v_t, vocab_size)
    zs = student_logits[..., :v]
    check_finite("student logits", zs)
    _check_labels(labels, zs.shape[:-1].numel(), v, s.ignore_index)
    mask = token_mask(labels, s.ignore_index)
    policy = s.policy()
    zt = h_t = None
    valid = mask.reshape(-1).nonzero().squeeze(1)
    if teacher_topk is not None:
        _check_topk(teacher_topk, s, valid.numel(), v)
        lp_valid = teacher_topk.log_probs(v)
        log_p = torch.full((mask.numel(), v), -math.log(v), device=zs.device).index_copy_(0, valid, lp_valid)
        log_p = log_p.view(*mask.shape, v)
        h_t = torch.zeros(mask.numel(), device=zs.device).index_copy_(0, valid, teacher_topk.entropy.float())
        h_t = h_t.view(mask.shape)
        weights = None if policy is None else _cached_weights(zs, h_t, policy, mask)
    else:
        assert teacher_logits is not None
        zt = teacher_logits[..., :v].detach()
        check_finite("teacher logits", zt)
        log_p = _log_softmax(zt, s.temperature)
        weights = None if policy is None else policy(zs.detach(), zt, mask=mask)
    if weights is not None and s.weight_level == "sequence":
        per_seq = _sequence_mean(weights.reshape(-1)[valid], valid // labels.shape[-1])
        weights = (
            torch.zeros(mask.numel(), device=weights.device).index_copy_(0, valid, per_seq).view(mask.shape)
        )
    total, kd, ce, per_token = _terms(zs, log_p, labels, weights, s, _denominator(mask, num_items_in_batch))
    w = None if weights is None else weights.reshape(-1)
    ent = (s.entropy_pair(zs, zt, h_t) * mask).reshape(2, -1) if with_entropies else None
    return TokenLossOutput(total, kd.detach(), ce.detach(), w, per_token.reshape(-1), ent)


class _Rows(NamedTuple):
    """Flattened inputs of the chunked loss: (N, H) hidden states, (V, H) weights, (N,) labels; the teacher
    as hidden states with lm_head, as logits, or as an offline top-k cache."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    t_hidden: torch.Tensor | None
    t_weight: torch.Tensor | None
    t_bias: torch.Tensor | None
    t_logits: torch.Tensor | None
    t_topk: TeacherTopK | None
    labels: torch.Tensor


def _teacher_rows(r: _Rows, i: int, j: int, s: TokenLossSettings) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(teacher logits, or None from a cache; teacher log-probs at T, float32) of rows i:j."""
    if r.t_topk is not None:
        return None, r.t_topk.rows(i, j).log_probs(r.weight.shape[0])
    if r.t_logits is not None:
        zt = r.t_logits[i:j]
    else:
        assert r.t_hidden is not None and r.t_weight is not None
        zt = F.linear(r.t_hidden[i:j], r.t_weight, r.t_bias)
    return zt, _log_softmax(zt, s.temperature)


def _chunk_weights(
    r: _Rows, i: int, zs: torch.Tensor, zt: torch.Tensor | None, s: TokenLossSettings, policy: Policy
) -> torch.Tensor:
    """Per-token weights (rows,) of rows i:i+len(zs): the policy on both logits, or from a cache's entropy."""
    if r.t_topk is not None:
        return _cached_weights(zs, r.t_topk.entropy[i : i + zs.shape[0]], policy, None)
    assert zt is not None
    return policy(zs, zt)


@torch.no_grad()
def _chunked_token_weights(
    r: _Rows, s: TokenLossSettings, policy: Policy, seq_ids: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Pre-pass for per-sequence weights: per-token weights chunk by chunk, then sequence means (M,)."""
    n = r.labels.numel()
    w = torch.empty(n, dtype=torch.float32, device=r.hidden.device)
    for i in range(0, n, chunk):
        j = min(i + chunk, n)
        zt = None if r.t_topk is not None else _teacher_rows(r, i, j, s)[0]
        w[i:j] = _chunk_weights(r, i, F.linear(r.hidden[i:j], r.weight, r.bias), zt, s, policy)
    return _sequence_mean(w, seq_ids)


class _FusedLinearDistill(torch.autograd.Function):
    """Chunked forward that also computes the input gradients; backward only scales them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        rest: tuple[Any, ...],
    ) -> tuple[torch.Tensor, ...]:
        t_hidden, t_weight, t_bias, t_logits, t_topk, labels, s, denom, seq_ids, chunk, with_entropies = rest
        r = _Rows(hidden, weight, bias, t_hidden, t_weight, t_bias, t_logits, t_topk, labels)
        n = labels.numel()
        policy = s.policy()
        seq_weights = None
        if policy is not None and s.weight_level == "sequence":
            seq_weights = _chunked_token_weights(r, s, policy, seq_ids, chunk)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        )
        grad_bias = None
        if bias is not None and need_bias:
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        loss = torch.zeros((), device=hidden.device)
        kd = torch.zeros((), device=hidden.device)
        ce = torch.zeros((), device=hidden.device)
        weights = None if policy is None else torch.empty(n, dtype=torch.float32, device=hidden.device)
        per_token = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropies = torch.empty(2, n, device=hidden.device) if with_entropies else None
        for i in range(0, n, chunk):
            j = min(i + chunk, n)
            h = hidden[i:j]
            zs = F.linear(h, weight, bias)
            zt, log_p = _teacher_rows(r, i, j, s)
            if seq_weights is not None:
                w = seq_weights[i:j]
            else:
                w = None if policy is None else _chunk_weights(r, i, zs, zt, s, policy)
            with torch.enable_grad():
                z = zs.detach().float().requires_grad_()
                total, kd_c, ce_c, per_token[i:j] = _terms(z, log_p, labels[i:j], w, s, denom)
                (g,) = torch.autograd.grad(total, z)
            if weights is not None and w is not None:
                weights[i:j] = w
            if entropies is not None:
                entropies[:, i:j] = s.entropy_pair(zs, zt, None if t_topk is None else t_topk.entropy[i:j])
            loss += total.detach()
            kd += kd_c.detach()
            ce += ce_c.detach()
            g = g.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[i:j] = g @ weight
            if grad_weight is not None:
                grad_weight += (g.t() @ h).float()
            if grad_bias is not None:
                grad_bias += g.float().sum(0)
        ctx.save_for_backward(
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),  # type: ignore[union-attr]
        )
        outs = tuple(x for x in (kd, ce, per_token, weights, entropies) if x is not None)
        ctx.mark_non_differentiable(*outs)
        return (loss, *outs)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[Any, ...]:  # type: ignore[override]
        grads = tuple(None if g is None else g * grad_loss.to(g.dtype) for g in ctx.saved_tensors)
        return (*grads, None)


def fused_linear_distill_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    teacher_topk: TeacherTopK | None = None,
    settings: TokenLossSettings | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    vocab_size: int | None = None,
    chunk_size: int = 512,
    with_entropies: bool = False,
) -> TokenLossOutput:
    """Chunked fused-linear EA-KD loss; never materialises the (B*T, V) logits.

    student_hidden (B, T, H) (or (N, H) with token weights), student_weight (V_s, H) lm_head, optional
    student_bias (V_s,); the teacher as teacher_hidden (B, T, H_t) with teacher_weight (V_t, H_t) (and
    teacher_bias), as precomputed teacher_logits (B, T, V_t), or as an offline ``teacher_topk`` cache of
    the valid tokens (``eakd.llm.cache``; the weights then use its stored teacher entropies). labels (B, T)
    aligned with the hidden states (already shifted). Vocabularies that differ only by padding rows are
    aligned to ``vocab_size`` (rows beyond it are dropped). The teacher gets no gradient. Gradients flow
    to student_hidden, student_weight and student_bias; reductions and entropies are float32, matmuls in
    the inputs' dtype. with_entropies: also return the per-token teacher/student entropies (diagnostics;
    two more softmax passes per chunk).
    """
    s = settings or TokenLossSettings()
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    given = [teacher_logits is not None, teacher_hidden is not None and teacher_weight is not None]
    if sum([*given, teacher_topk is not None]) != 1:
        raise ValueError(
            "give one teacher: teacher_hidden with teacher_weight, teacher_logits, or teacher_topk"
        )
    h_size = student_hidden.shape[-1]
    if student_weight.shape[-1] != h_size:
        raise ValueError(f"student_weight {tuple(student_weight.shape)} does not match hidden size {h_size}")
    seq_len = labels.shape[-1] if labels.dim() > 1 else labels.numel()
    if s.weight_level == "sequence" and labels.dim() < 2:
        raise ValueError("weight_level='sequence' needs (B, T) labels and hidden states")
    t_hidden = t_weight = t_bias = t_logits = None
    if teacher_topk is not None:
        v_t = teacher_topk.vocab_size
    elif teacher_logits is not None:
        v_t = teacher_logits.shape[-1]
        t_logits = teacher_logits.detach().reshape(-1, v_t)
    else:
        assert teacher_hidden is not None and teacher_weight is not None
        v_t = teacher_weight.shape[0]
        t_hidden = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
        t_weight = teacher_weight.detach()
        t_bias = None if teacher_bias is None else teacher_bias.detach()
    v = _align_vocab(student_weight.shape[0], v_t, vocab_size)
    hidden = student_hidden.reshape(-1, h_size)
    flat_labels = labels.reshape(-1)
    _check_labels(flat_labels, hidden.shape[0], v, s.ignore_index)
    if t_hidden is not None and t_hidden.shape[0] != hidden.shape[0]:
        raise ValueError(f"teacher has {t_hidden.shape[0]} rows, student {hidden.shape[0]}")
    check_finite("student hidden states", student_hidden)
    mask = token_mask(flat_labels, s.ignore_index)
    denom = _denominator(mask, num_items_in_batch)
    valid = mask.nonzero().squeeze(1)  # only rows with a label are computed at all (prompt, padding skipped)
    if teacher_topk is not None:
        _check_topk(teacher_topk, s, valid.numel(), v)
    rest = (
        None if t_hidden is None else t_hidden.index_select(0, valid),
        None if t_weight is None else t_weight[:v],
        None if t_bias is None else t_bias[:v],
        None if t_logits is None else t_logits.index_select(0, valid)[:, :v],
        teacher_topk,
        flat_labels[valid],
        s,
        denom,
        valid // seq_len,
        chunk_size,
        with_entropies,
    )
    w_s = student_weight[:v]
    b_s = None if student_bias is None else student_bias[:v]
    loss, kd, ce, *per_row = _FusedLinearDistill.apply(hidden.index_select(0, valid), w_s, b_s, rest)
    n = flat_labels.numel()
    full = [torch.zeros((*x.shape[:-1], n), device=x.device).index_copy_(-1, valid, x) for x in per_row]
    weights = full.pop(1) if s.policy() is not None else None
    return TokenLossOutput(loss, kd, ce, weights, full[0], full[1] if with_entropies else None)
