"""The token-level EA-KD loss from materialised logits (B, T, V): the dense path, and the reference of the
chunked one (``eakd.llm.chunked``, the same row math of ``eakd.llm.rows`` with autograd's gradients).
See ``eakd.llm.settings`` for the formula."""

from __future__ import annotations

import torch

from eakd.checks import check_logit_pair
from eakd.llm.cache import TeacherTopK
from eakd.llm.rows import (
    CachedRows,
    LogitRows,
    TeacherRows,
    align_vocab,
    divergence_and_weights,
    finish_weights,
    labelled_rows,
    row_terms,
    scatter,
)
from eakd.llm.settings import TokenLossOutput, TokenLossSettings


def distill_loss_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    settings: TokenLossSettings | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    vocab_size: int | None = None,
    teacher_topk: TeacherTopK | None = None,
    label_index: torch.Tensor | None = None,
    *,
    defer: bool = False,
) -> TokenLossOutput:
    """The loss from materialised logits (B, T, V) (dense path; the reference of the chunked one).

    labels (B, T), already aligned with the logits (shifted for next-token prediction). The teacher is
    teacher_logits (B, T, V_t) (exactly the student's rows: no broadcasting), or (teacher_logits None) an
    offline ``teacher_topk`` of the valid tokens. label_index: the flat positions of the valid tokens in
    (B*T) (``eakd.llm.rows.labelled_rows``; None: found with a host sync). A non-finite term, an invalid
    input or num_items_in_batch <= 0 is a ValueError (host syncs), except with ``defer=True``
    (``EAKDTrainer``): no host sync, and the caller reads ``TokenLossOutput.flags`` on the device.
    """
    s = settings or TokenLossSettings()
    if (teacher_logits is None) == (teacher_topk is None):
        raise ValueError("give either teacher_logits or teacher_topk (not both)")
    v_t = teacher_logits.shape[-1] if teacher_logits is not None else teacher_topk.vocab_size  # type: ignore[union-attr]
    v = align_vocab(student_logits.shape[-1], v_t, vocab_size)
    zs = student_logits[..., :v]
    rows = labelled_rows(labels, zs.shape[:-1], v, s, label_index, num_items_in_batch, defer)
    bad_cache = torch.zeros((), dtype=torch.bool, device=zs.device)
    teacher: TeacherRows
    if teacher_topk is not None:
        teacher_topk, bad_cache = teacher_topk.checked(s, rows.valid.numel(), v, defer)
        teacher = CachedRows(teacher_topk, v)
    else:
        assert teacher_logits is not None
        zt = teacher_logits[..., :v].detach()
        check_logit_pair(zs, zt)
        teacher = LogitRows(zt.reshape(-1, v).index_select(0, rows.valid))
    z = zs.reshape(-1, v).index_select(0, rows.valid)
    policy = s.policy()
    teacher_rows = teacher.chunk(0, z.shape[0])
    compiled = s.compiled(z.numel())
    per_token, weighted = divergence_and_weights(s, policy, z, teacher_rows, compiled, defer)
    weights = None if weighted is None else finish_weights(weighted.weights, rows, s)
    total, kd, ce = row_terms(z, rows.labels, per_token, weights, s, rows.denom, defer)
    h_s = h_t = None
    if weighted is not None and weighted.h_t is not None and weighted.h_s is not None:
        h_t, h_s = scatter(weighted.h_t, rows), scatter(weighted.h_s, rows)
    w = None if weights is None else scatter(weights, rows)
    invalid = torch.cat([rows.bad, bad_cache.to(rows.bad.device)[None]])
    out = TokenLossOutput(
        total, kd.detach(), ce.detach(), w, scatter(per_token.detach(), rows), h_t, h_s, invalid
    )
    return out if defer else out.check_finite()
