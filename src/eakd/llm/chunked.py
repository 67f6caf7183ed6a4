"""The token-level EA-KD loss chunked with the lm_head: never materialises the (B*T, V) logits.

It runs ``chunk_size`` labelled rows at a time, computes the gradients w.r.t. the hidden states, lm_head
weight and bias in the forward pass, and scales them by the incoming gradient in the backward pass. The
teacher is any row source of ``eakd.llm.rows`` (logits, hidden states with an lm_head, a top-k cache) and
the per-row math is that module's, the same as the dense path's (see ``eakd.llm.settings``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from eakd.llm.cache import TeacherTopK
from eakd.llm.rows import (
    CachedRows,
    HeadRows,
    LogitRows,
    Rows,
    TeacherRows,
    align_vocab,
    depends_on_other_rows,
    divergence_and_weights,
    finish_weights,
    labelled_rows,
    row_terms,
    row_weights,
    scatter,
)
from eakd.llm.settings import TokenLossOutput, TokenLossSettings
from eakd.weighting import Policy


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


class Job(NamedTuple):
    """What the chunks compute: the settings and their bound policy, the labelled rows, rows per chunk,
    whether the value checks wait for the caller (``defer``, ``eakd.checks``) and whether the chunks take
    the compiled pass (``compiled``, decided once per call on a full chunk's size)."""

    settings: TokenLossSettings
    policy: Policy | None
    rows: Rows
    chunk_size: int
    defer: bool
    compiled: bool


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


class _ChunkedDistill(torch.autograd.Function):
    """Chunked forward that also computes the input gradients; backward only scales them.

    Returns (loss, kd, ce, per_token (M,), then weights (M,) with a policy, then h_s, h_t (M,) with a
    policy that uses entropies); all but the loss are detached diagnostics.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        teacher: TeacherRows,
        job: Job,
    ) -> tuple[torch.Tensor, ...]:
        s, policy, rows = job.settings, job.policy, job.rows
        n, dev = rows.labels.numel(), hidden.device
        chunks = _chunks(n, job.chunk_size)
        stats: list[torch.Tensor] = []  # weights, then h_s, h_t
        if policy is not None:
            stats = [torch.empty(n, device=dev) for _ in range(1 if policy.tau is None else 3)]
        # a pre-pass without gradients when a weight depends on other rows (sequence means, the mean over
        # all valid rows): every row's weight first, then those steps, before any chunk's gradient
        prepass = depends_on_other_rows(s, policy)
        if prepass:
            assert policy is not None
            for i, j in chunks:
                zs = F.linear(hidden[i:j], weight, bias)
                _store(stats, row_weights(policy, zs, teacher.chunk(i, j), job.defer), i, j)
            stats[0] = finish_weights(stats[0], rows, s)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=dev) if need_weight else None
        grad_bias = None
        if bias is not None and need_bias:
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=dev)
        loss, kd, ce = (torch.zeros((), device=dev) for _ in range(3))
        per_token = torch.empty(n, dtype=torch.float32, device=dev)
        for i, j in chunks:
            h = hidden[i:j]
            zs = F.linear(h, weight, bias)
            with torch.enable_grad():
                z = zs.detach().float().requires_grad_()
                per, weighted = divergence_and_weights(
                    s, None if prepass else policy, z, teacher.chunk(i, j), job.compiled, job.defer
                )
                if weighted is not None:
                    _store(stats, weighted, i, j)
                w = stats[0][i:j] if stats else None
                total, kd_c, ce_c = row_terms(z, rows.labels[i:j], per, w, s, rows.denom, job.defer)
                (g,) = torch.autograd.grad(total, z)
            per_token[i:j] = per.detach()
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
        return (*grads, None, None)


def _store(out: list[torch.Tensor], weighted: Any, i: int, j: int) -> None:
    """Write rows i:j of (weights, h_s, h_t) into the preallocated buffers ``out``."""
    for buf, x in zip(out, weighted, strict=False):
        if x is not None:
            buf[i:j] = x


def chunked_distill_loss(
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
    defer: bool = False,
) -> TokenLossOutput:
    """Chunked EA-KD loss from the last hidden states and lm_head; never materialises the (B*T, V) logits.

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
    (``eakd.llm.rows.labelled_rows``; None: found with a host sync); only those rows are computed. A
    non-finite term, an invalid input or num_items_in_batch <= 0 is a ValueError (host syncs), except
    with ``defer=True`` (``EAKDTrainer``): no host sync, and the caller reads ``TokenLossOutput.flags``
    on the device.
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
    shape = student_hidden.shape[:-1]
    check_head("student", student_weight, student_bias, h_size)
    if teacher_topk is not None:
        v_t = teacher_topk.vocab_size
    elif teacher_logits is not None:
        check_rows("teacher_logits", teacher_logits, shape)
        v_t = teacher_logits.shape[-1]
    else:
        assert teacher_hidden is not None and teacher_weight is not None
        check_rows("teacher_hidden", teacher_hidden, shape)
        check_head("teacher", teacher_weight, teacher_bias, teacher_hidden.shape[-1])
        v_t = teacher_weight.shape[0]
    v = align_vocab(student_weight.shape[0], v_t, vocab_size)
    rows = labelled_rows(labels, shape, v, s, label_index, num_items_in_batch, defer)  # only these count
    bad_cache = torch.zeros((), dtype=torch.bool, device=student_hidden.device)
    teacher: TeacherRows
    if teacher_topk is not None:
        teacher_topk, bad_cache = teacher_topk.checked(s, rows.valid.numel(), v, defer)
        teacher = CachedRows(teacher_topk, v)
    elif teacher_logits is not None:
        teacher = LogitRows(teacher_logits.detach().reshape(-1, v_t).index_select(0, rows.valid)[:, :v])
    else:
        assert teacher_hidden is not None and teacher_weight is not None
        t_hidden = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]).index_select(0, rows.valid)
        t_bias = None if teacher_bias is None else teacher_bias.detach()[:v]
        teacher = HeadRows(t_hidden, teacher_weight.detach()[:v], t_bias)
    hidden = student_hidden.reshape(-1, h_size).index_select(0, rows.valid)
    b_s = None if student_bias is None else student_bias[:v]
    compiled = s.compiled(min(chunk_size, max(rows.labels.numel(), 1)) * v)
    job = Job(s, s.policy(), rows, chunk_size, defer, compiled)
    loss, kd, ce, *per_row = _ChunkedDistill.apply(hidden, student_weight[:v], b_s, teacher, job)
    per_token, *stats = [scatter(x, rows) for x in per_row]
    weights = stats[0] if stats else None
    h_s, h_t = stats[1:] if len(stats) == 3 else (None, None)
    invalid = torch.cat([rows.bad, bad_cache.to(rows.bad.device)[None]])
    out = TokenLossOutput(loss, kd, ce, weights, per_token, h_t, h_s, invalid)
    return out if defer else out.check_finite()
