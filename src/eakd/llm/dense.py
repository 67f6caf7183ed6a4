"""The token-level EA-KD loss from materialised logits (B, T, V): the dense path and the reference of the
chunked one (``eakd.llm.chunked``), with the per-row math both share (see ``eakd.llm.settings`` for the
formula). Weights and entropies come from the settings' bound policy, computed once."""

from __future__ import annotations

import math

import torch

from eakd.checks import check_flag, check_logit_pair, check_positive, check_positive_values
from eakd.distill import normalise_weights
from eakd.llm.cache import TeacherTopK
from eakd.llm.settings import TokenLossOutput, TokenLossSettings
from eakd.losses.reduce import weighted_mean
from eakd.losses.token import token_mask
from eakd.weighting import Policy, Weighted


def denominator(mask: torch.Tensor, num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor:
    """The loss's 0-dim float denominator: ``num_items_in_batch`` (> 0), else the valid tokens of ``mask``.

    A count <= 0 is a ValueError; a count tensor inside ``eakd.checks.deferred_checks()`` is not read back
    (no host sync): a count <= 0 then makes the denominator NaN, and the loss's terms non-finite.
    """
    if num_items_in_batch is None:
        return mask.sum().clamp_min(1).float()
    if not isinstance(num_items_in_batch, torch.Tensor):
        check_positive("num_items_in_batch", num_items_in_batch)
    n = torch.as_tensor(num_items_in_batch, device=mask.device).float()
    if n.numel() != 1:
        raise ValueError(f"num_items_in_batch must be one number, got shape {tuple(n.shape)}")
    return check_positive_values("num_items_in_batch", n.reshape(()))


def sequence_mean(weights: torch.Tensor, seq_ids: torch.Tensor, n_seq: int) -> torch.Tensor:
    """Weights of valid tokens (M,) -> the mean weight of each token's sequence (M,); seq_ids (M,) int64 in
    [0, n_seq) (n_seq: the batch's rows B, so no read-back of the ids)."""
    sums = torch.zeros(n_seq, device=weights.device).index_add_(0, seq_ids, weights)
    counts = torch.zeros(n_seq, device=weights.device).index_add_(0, seq_ids, torch.ones_like(weights))
    return (sums / counts.clamp_min(1))[seq_ids]


def log_softmax_at(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 log_softmax(z / T) over the last dim, without the division's copy at T = 1."""
    z = z.float()
    return torch.log_softmax(z if temperature == 1.0 else z / temperature, dim=-1)


def cached_weights(
    policy: Policy, zs: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor | None
) -> Weighted:
    """The built-in ``policy`` on student rows zs (..., V) against a cached teacher entropy h_t (...) in
    nats at the policy's tau: weights (...), and the student entropy at that tau (None for "uniform")."""
    if policy.tau is None:  # uniform: no entropies
        return Weighted(policy.from_entropies(None, h_t, zs.shape[-1], mask), None, None)
    _, h_s = policy.entropies(None, zs)  # the policy's entropy of zs (tau, standardisation)
    return Weighted(policy.from_entropies(h_s, h_t, zs.shape[-1], mask), h_s, h_t.float())


def fused_rows(
    zs: torch.Tensor,
    zt: torch.Tensor | None,
    log_p: torch.Tensor | None,
    h_t: torch.Tensor | None,
    policy: Policy | None,
    s: TokenLossSettings,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, Weighted | None]:
    """``s.fused``: (the per-token divergence (...) of student rows zs (..., V), the built-in ``policy``'s
    weights and entropies | None) from one compiled pass (``eakd.losses.fused.fused_token_terms``), against
    the teacher's logits zt (..., V), or (zt None) its log-probs at T log_p (..., V) with the cache's
    entropies h_t (...) at the policy's tau."""
    from eakd.losses.fused import fused_token_terms

    tau = None if policy is None else policy.tau
    per_token, h_s, h_t = fused_token_terms(
        s.divergence, zs, zt, temperature=s.temperature, tau=tau,
        h_t=None if zt is not None or tau is None else h_t,
        teacher_log_probs=log_p if zt is None else None, **s.divergence_settings(),
    )  # fmt: skip
    if policy is None:
        return per_token, None
    if tau is None:  # uniform: no entropies
        return per_token, Weighted(
            policy.from_entropies(None, per_token.detach(), zs.shape[-1], mask), None, None
        )
    assert h_t is not None
    return per_token, Weighted(policy.from_entropies(h_s, h_t, zs.shape[-1], mask), h_s, h_t)


def loss_terms(
    zs: torch.Tensor,
    log_p: torch.Tensor | None,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    s: TokenLossSettings,
    denom: torch.Tensor,
    per_token: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of student rows (..., V) against teacher log-probs at T (..., V), with given detached weights
    (...): (total, kd, ce, per_token), float32. per_token: the divergence already computed (``fused_rows``;
    log_p is then not read)."""
    mask = token_mask(labels, s.ignore_index)
    log_q = None
    if per_token is None:
        assert log_p is not None
        log_q = log_softmax_at(zs, s.temperature)
        per_token = s.divergence_fn()(log_q, log_p)
    kd = weighted_mean(per_token, weights, mask, denominator=denom)
    total = s.kd_weight * kd
    ce = torch.zeros((), device=zs.device)
    if s.ce_weight > 0:
        log_q1 = log_q if log_q is not None and s.temperature == 1.0 else log_softmax_at(zs, 1.0)  # T = 1
        ce_tok = -log_q1.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        ce = weighted_mean(ce_tok, mask=mask, denominator=denom)
        total = total + s.ce_weight * ce
    return total, kd, ce, torch.where(mask, per_token.detach(), 0.0)


def align_vocab(v_student: int, v_teacher: int, vocab_size: int | None) -> int:
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


def check_labels(
    labels: torch.Tensor, rows: torch.Size, vocab: int, s: TokenLossSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels must have exactly the student's row shape ``rows`` ((B, T) for sequence-level weights), each
    in [0, vocab) or ``s.ignore_index``. Returns (the labels, a 0-dim bool flag that some were out of
    range): eager, an out-of-range label is a ValueError (a host read); deferred
    (``eakd.checks.deferred_checks``), it is clamped into [0, vocab) so nothing indexes out of bounds, and
    flagged."""
    if labels.shape != rows:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match the student's rows {tuple(rows)} (hidden states or "
            "logits without their last dim)"
        )
    if s.weight_level == "sequence" and labels.dim() < 2:
        raise ValueError("weight_level='sequence' needs (B, T) labels and hidden states/logits")
    out = (labels != s.ignore_index) & ((labels < 0) | (labels >= vocab))
    bad = check_flag(f"labels must be in [0, {vocab}) or ignore_index={s.ignore_index}", out.any())
    return torch.where(out, labels.clamp(0, vocab - 1), labels), bad


def labelled_rows(mask: torch.Tensor, label_index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the flat indices (M,) int64 of ``mask``'s True entries in row-major order, a 0-dim bool flag).

    label_index None: ``mask.nonzero()`` (a host sync: M sizes the output). Else the indices the data
    collator computed on the host (``eakd.llm.data.collate``), checked on the device: they must rise
    strictly, point at True entries only, and count them all; otherwise a ValueError (eager) or the flag
    (deferred, with the indices clamped into range)."""
    flat = mask.reshape(-1)
    if label_index is None:
        return flat.nonzero().squeeze(1), torch.zeros((), dtype=torch.bool, device=flat.device)
    index = label_index.reshape(-1).to(flat.device, torch.long)
    safe = index.clamp(0, max(flat.numel() - 1, 0))
    ok = (safe == index).all() & (index.diff() > 0).all() & (flat.sum() == index.numel())
    if index.numel():
        ok = ok & flat[safe].all()
    bad = check_flag("label_index is not the flat positions of the labelled tokens, in order", ~ok)
    return safe, bad


def distill_loss_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    settings: TokenLossSettings | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    vocab_size: int | None = None,
    teacher_topk: TeacherTopK | None = None,
    label_index: torch.Tensor | None = None,
) -> TokenLossOutput:
    """The loss from materialised logits (B, T, V) (dense path; the reference of the chunked one).

    labels (B, T), already aligned with the logits (shifted for next-token prediction). The teacher is
    teacher_logits (B, T, V_t) (exactly the student's rows: no broadcasting), or (teacher_logits None) an
    offline ``teacher_topk`` of the valid tokens. label_index: the flat positions of the valid tokens in
    (B*T) (``labelled_rows``; None: found with a host sync). A non-finite term, an invalid input or
    num_items_in_batch <= 0 is a ValueError (host syncs), except inside ``eakd.checks.deferred_checks()``,
    where ``EAKDTrainer`` runs it and accumulates ``TokenLossOutput.flags`` on the device instead.
    """
    s = settings or TokenLossSettings()
    if (teacher_logits is None) == (teacher_topk is None):
        raise ValueError("give either teacher_logits or teacher_topk (not both)")
    v_t = teacher_logits.shape[-1] if teacher_logits is not None else teacher_topk.vocab_size  # type: ignore[union-attr]
    v = align_vocab(student_logits.shape[-1], v_t, vocab_size)
    zs = student_logits[..., :v]
    labels, bad_labels = check_labels(labels, zs.shape[:-1], v, s)
    mask = token_mask(labels, s.ignore_index)
    policy = s.policy()
    valid, bad_index = labelled_rows(mask, label_index)
    bad_cache = torch.zeros((), dtype=torch.bool, device=zs.device)
    weighted = zt = h_t = None
    if teacher_topk is not None:
        teacher_topk, bad_cache = teacher_topk.checked(s, valid.numel(), v)
        lp_valid = teacher_topk.log_probs(v)
        log_p = torch.full((mask.numel(), v), -math.log(v), device=zs.device).index_copy_(0, valid, lp_valid)
        log_p = log_p.view(*mask.shape, v)
        h_t = torch.zeros(mask.numel(), device=zs.device).index_copy_(0, valid, teacher_topk.entropy.float())
        h_t = h_t.view(mask.shape)
        if policy is not None and not s.fused:
            weighted = cached_weights(policy, zs, h_t, mask)
    else:
        assert teacher_logits is not None
        zt = teacher_logits[..., :v].detach()
        check_logit_pair(zs, zt)
        log_p = None if s.fused else log_softmax_at(zt, s.temperature)
        if policy is not None and not s.fused:
            weighted = policy.compute(zs.detach(), zt, mask)
    per_token = None
    if s.fused:
        per_token, weighted = fused_rows(zs, zt, log_p, h_t, policy, s, mask)
    weights = None if weighted is None else weighted.weights
    if weights is not None and s.weight_level == "sequence":
        per_seq = sequence_mean(weights.reshape(-1)[valid], valid // labels.shape[-1], labels.shape[0])
        weights = (
            torch.zeros(mask.numel(), device=weights.device).index_copy_(0, valid, per_seq).view(mask.shape)
        )
    if weights is not None:
        weights = normalise_weights(weights, mask, s.weight_norm)
    total, kd, ce, per_token = loss_terms(
        zs, log_p, labels, weights, s, denominator(mask, num_items_in_batch), per_token
    )
    h_t = h_s = None
    if weighted is not None and weighted.h_t is not None and weighted.h_s is not None:
        h_t, h_s = (torch.where(mask, h, 0.0).reshape(-1) for h in (weighted.h_t, weighted.h_s))
    w = None if weights is None else weights.reshape(-1)
    invalid = torch.stack([bad_labels, bad_index, bad_cache.to(bad_labels.device)])
    out = TokenLossOutput(total, kd.detach(), ce.detach(), w, per_token.reshape(-1), h_t, h_s, invalid)
    return out.check_finite()
