"""The token-level EA-KD loss chunked and fused with the lm_head: never materialises the (B*T, V) logits.

It runs ``chunk_size`` valid rows at a time, computes the gradients w.r.t. the hidden states, lm_head
weight and bias in the forward pass, and scales them by the incoming gradient in the backward pass. Same
math as ``eakd.llm.dense`` (see ``eakd.llm.settings`` for the formula).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from eakd.distill import normalise_weights
from eakd.llm.cache import TeacherTopK
from eakd.llm.dense import (
    align_vocab,
    cached_weights,
    check_labels,
    denominator,
    fused_rows,
    labelled_rows,
    log_softmax_at,
    loss_terms,
    sequence_mean,
)
from eakd.llm.settings import TokenLossOutput, TokenLossSettings
from eakd.losses.token import token_mask
from eakd.weighting import Policy, Weighted

FUSED_RANGE = "eakd.fused_loss"  # the torch.profiler range of the fused pass (benchmarks/step_attribution.py)


def check_rows(name: str, x: torch.Tensor, rows: torch.Size) -> None:
    """``x`` (..., D) must have exactly the student's row dims ``rows`` (e.g. (B, T)): no broadcasting."""
    if x.shape[:-1] != rows:
        raise ValueError(
            f"{name} {tuple(x.shape)} does not match the student's rows {tuple(rows)}: give one "
            "row per student row (no broadcasting)"
        )


def check_head(name: str, weight: torch.Tensor, bias: torch.Tensor | None, width: int) -> None:
    """An lm_head ``weight`` (V, H) must take hidden states of ``width`` H; its ``bias`` must be (V,)."""
    if weight.dim() != 2 or weight.shape[1] != width:
        raise ValueError(f"{name}_weight {tuple(weight.shape)} is not (V, {width}) for hidden size {width}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"{name}_bias {tuple(bias.shape)} is not ({weight.shape[0]},) for {name}_weight")


class ChunkInputs(NamedTuple):
    """What the autograd Function gets besides the student's (M, H) hidden states, (V, H) lm_head weight
    and (V,) bias, all at the M valid rows: the teacher as hidden states (M, H_t) with its lm_head (V, H_t)
    and bias, as logits (M, V), or as an offline top-k cache; labels (M,); the settings and their bound
    policy; denom (0-dim) of the reduction; seq_ids (M,) the sequence of each row, of n_seq; chunk_size
    rows."""

    t_hidden: torch.Tensor | None
    t_weight: torch.Tensor | None
    t_bias: torch.Tensor | None
    t_logits: torch.Tensor | None
    t_topk: TeacherTopK | None
    labels: torch.Tensor
    settings: TokenLossSettings
    policy: Policy | None
    denom: torch.Tensor
    seq_ids: torch.Tensor
    n_seq: int
    chunk_size: int


def _teacher_rows(
    c: ChunkInputs, i: int, j: int, vocab: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(teacher logits (j-i, V) | None, teacher log-probs at T (j-i, V) float32 | None: from logits with
    ``settings.fused``, whose pass computes them) of rows i:j."""
    if c.t_topk is not None:
        return None, c.t_topk.rows(i, j).log_probs(vocab)
    if c.t_logits is not None:
        zt = c.t_logits[i:j]
    else:
        assert c.t_hidden is not None and c.t_weight is not None
        zt = F.linear(c.t_hidden[i:j], c.t_weight, c.t_bias)
    return zt, None if c.settings.fused else log_softmax_at(zt, c.settings.temperature)


def _weigh(c: ChunkInputs, policy: Policy, i: int, zs: torch.Tensor, zt: torch.Tensor | None) -> Weighted:
    """The policy's weights and entropies of rows i:i+len(zs): on both logits, or with a cache's entropy."""
    if c.t_topk is not None:
        return cached_weights(policy, zs, c.t_topk.entropy[i : i + zs.shape[0]], None)
    assert zt is not None
    return policy.compute(zs, zt)


def _store(out: list[torch.Tensor], weighted: Weighted, i: int, j: int) -> None:
    """Write rows i:j of (weights, h_s, h_t) into the preallocated buffers ``out``."""
    for buf, x in zip(out, weighted, strict=False):
        if x is not None:
            buf[i:j] = x


class _FusedLinearDistill(torch.autograd.Function):
    """Chunked forward that also computes the input gradients; backward only scales them.

    Returns (loss, kd, ce, per_token (M,), then weights (M,) with a policy, then h_s, h_t (M,) with a
    policy that uses entropies); all but the loss are detached diagnostics.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, c: ChunkInputs
    ) -> tuple[torch.Tensor, ...]:
        s, policy, chunk = c.settings, c.policy, c.chunk_size
        n = c.labels.numel()
        dev = hidden.device
        stats: list[torch.Tensor] = []  # weights, then h_s, h_t
        if policy is not None:
            stats = [torch.empty(n, device=dev) for _ in range(1 if policy.tau is None else 3)]
        # a pre-pass without gradients when a weight depends on other rows (sequence means, the mean over
        # all valid rows): every row's weight first, then the means, before any chunk's gradient
        prepass = policy is not None and (s.weight_level == "sequence" or s.weight_norm != "none")
        if prepass:
            assert policy is not None
            for i in range(0, n, chunk):
                j = min(i + chunk, n)
                zs = F.linear(hidden[i:j], weight, bias)
                _store(stats, _weigh(c, policy, i, zs, _teacher_rows(c, i, j, weight.shape[0])[0]), i, j)
            if s.weight_level == "sequence":
                stats[0] = sequence_mean(stats[0], c.seq_ids, c.n_seq)
            stats[0] = normalise_weights(stats[0], None, s.weight_norm)  # all M rows are valid
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=dev) if need_weight else None
        grad_bias = None
        if bias is not None and need_bias:
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=dev)
        loss, kd, ce = (torch.zeros((), device=dev) for _ in range(3))
        per_token = torch.empty(n, dtype=torch.float32, device=dev)
        for i in range(0, n, chunk):
            j = min(i + chunk, n)
            h = hidden[i:j]
            zs = F.linear(h, weight, bias)
            zt, log_p = _teacher_rows(c, i, j, weight.shape[0])
            if policy is not None and not prepass and not s.fused:
                _store(stats, _weigh(c, policy, i, zs, zt), i, j)
            with torch.enable_grad():
                z = zs.detach().float().requires_grad_()
                per = None
                if s.fused:  # the divergence and, unless pre-passed, the weights' entropies: one pass
                    h_t = None if c.t_topk is None else c.t_topk.entropy[i:j]
                    with torch.profiler.record_function(FUSED_RANGE):
                        per, weighted = fused_rows(z, zt, log_p, h_t, None if prepass else policy, s, None)
                    if weighted is not None:
                        _store(stats, weighted, i, j)
                w = stats[0][i:j] if stats else None
                total, kd_c, ce_c, per_token[i:j] = loss_terms(z, log_p, c.labels[i:j], w, s, c.denom, per)
                (g,) = torch.autograd.grad(total, z)
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
        outs = (kd, ce, per_token, *stats)
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
    label_index: torch.Tensor | None = None,
) -> TokenLossOutput:
    """Chunked fused-linear EA-KD loss; never materialises the (B*T, V) logits.

    student_hidden (B, T, H) (or (N, H) with token weights), student_weight (V_s, H) lm_head, optional
    student_bias (V_s,); the teacher as teacher_hidden (B, T, H_t) with teacher_weight (V_t, H_t) (and
    teacher_bias), as precomputed teacher_logits (B, T, V_t), or as an offline ``teacher_topk`` cache of
    the valid tokens (``eakd.llm.cache``; the weights then use its stored teacher entropies). labels (B, T)
    aligned with the hidden states (already shifted). Vocabularies that differ only by padding rows are
    aligned to ``vocab_size`` (rows beyond it are dropped). The teacher gets no gradient. Gradients flow
    to student_hidden, student_weight and student_bias; reductions and entropies are float32, matmuls in
    the inputs' dtype. The output's entropies are those the weights were computed from (no extra pass).
    Every teacher form is shape-checked: its rows must be exactly the student's (no broadcasting), and
    an lm_head must match its hidden size. label_index: the flat positions (M,) of the labelled rows
    (``eakd.llm.dense.labelled_rows``; None: found with a host sync); only those rows are computed. A
    non-finite term, an invalid input or num_items_in_batch <= 0 is a ValueError (host syncs), except
    inside ``eakd.checks.deferred_checks()``, where ``EAKDTrainer`` runs it and accumulates
    ``TokenLossOutput.flags`` on the device instead.
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
    rows = student_hidden.shape[:-1]
    check_head("student", student_weight, student_bias, h_size)
    t_hidden = t_weight = t_bias = t_logits = None
    if teacher_topk is not None:
        v_t = teacher_topk.vocab_size
    elif teacher_logits is not None:
        check_rows("teacher_logits", teacher_logits, rows)
        v_t = teacher_logits.shape[-1]
        t_logits = teacher_logits.detach().reshape(-1, v_t)
    else:
        assert teacher_hidden is not None and teacher_weight is not None
        check_rows("teacher_hidden", teacher_hidden, rows)
        check_head("teacher", teacher_weight, teacher_bias, teacher_hidden.shape[-1])
        v_t = teacher_weight.shape[0]
        t_hidden = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
        t_weight = teacher_weight.detach()
        t_bias = None if teacher_bias is None else teacher_bias.detach()
    v = align_vocab(student_weight.shape[0], v_t, vocab_size)
    labels, bad_labels = check_labels(labels, rows, v, s)
    hidden = student_hidden.reshape(-1, h_size)
    flat_labels = labels.reshape(-1)
    mask = token_mask(flat_labels, s.ignore_index)
    valid, bad_index = labelled_rows(mask, label_index)  # only labelled rows are computed at all
    bad_cache = torch.zeros((), dtype=torch.bool, device=hidden.device)
    if teacher_topk is not None:
        teacher_topk, bad_cache = teacher_topk.checked(s, valid.numel(), v)
    policy = s.policy()
    inputs = ChunkInputs(
        t_hidden=None if t_hidden is None else t_hidden.index_select(0, valid),
        t_weight=None if t_weight is None else t_weight[:v],
        t_bias=None if t_bias is None else t_bias[:v],
        t_logits=None if t_logits is None else t_logits.index_select(0, valid)[:, :v],
        t_topk=teacher_topk,
        labels=flat_labels[valid],
        settings=s,
        policy=policy,
        denom=denominator(mask, num_items_in_batch),
        seq_ids=valid // labels.shape[-1],
        n_seq=labels.shape[0] if labels.dim() > 1 else 1,
        chunk_size=chunk_size,
    )
    w_s = student_weight[:v]
    b_s = None if student_bias is None else student_bias[:v]
    loss, kd, ce, *per_row = _FusedLinearDistill.apply(hidden.index_select(0, valid), w_s, b_s, inputs)
    n = flat_labels.numel()
    per_token, *stats = [torch.zeros(n, device=x.device).index_copy_(0, valid, x) for x in per_row]
    weights = stats[0] if stats else None
    h_s, h_t = stats[1:] if len(stats) == 3 else (None, None)
    invalid = torch.stack([bad_labels, bad_index, bad_cache.to(bad_labels.device)])
    out = TokenLossOutput(loss, kd, ce, weights, per_token, h_t, h_s, invalid)
    return out.check_finite()
