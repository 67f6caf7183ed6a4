"""The token loss's row math, shared by the dense path (``eakd.llm.dense``) and the chunked one
(``eakd.llm.chunked``): both select the M labelled rows first, then compute on (n, V) rows of logits.

A teacher is one of three row sources (``TeacherRows``): its logits (``LogitRows``), its last hidden
states and lm_head (``HeadRows``), or an offline cache (``CachedRows``); each gives a chunk of rows
as a ``TeacherChunk``: logits (a top-k cache's as T * log-probs, whose softmax at T is the cached
distribution), and what the cache knows already (its log-probs at T and entropy at tau); a sampled cache
gives its rows instead of logits, and the divergence is estimated from them (``eakd.llm.sparse``). The rest is
functions of rows: the divergence and the policy's weights (``divergence_and_weights``), the
row-dependent weight steps (``finish_weights``: per-sequence means, mean normalisation) and the reduced
terms (``row_terms``). See ``eakd.llm.settings`` for the formula.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

from eakd.checks import check_flag, check_positive, check_positive_values
from eakd.llm.cache import TeacherTopK
from eakd.llm.settings import TokenLossSettings
from eakd.llm.sparse import sampled_divergence
from eakd.losses.reduce import weighted_mean
from eakd.weighting import Policy, Weighted, normalise_weights

Tensor = torch.Tensor
COMPILED_RANGE = "eakd.compiled_pass"  # the torch.profiler range of the compiled single pass


class TeacherChunk(NamedTuple):
    """The teacher at n rows. logits (n, V): whose softmax at T is the teacher (None for a sampled cache).
    log_probs (n, V) float32: its log-probabilities at T when known (a top-k cache), else None. entropy
    (n,): its entropy in nats at the policy's tau when known (a cache), else None. sampled: a sampled
    cache's n rows (``TeacherTopK`` with samples > 0), else None."""

    logits: Tensor | None
    log_probs: Tensor | None = None
    entropy: Tensor | None = None
    sampled: TeacherTopK | None = None


class TeacherRows(Protocol):
    """A teacher over the M labelled rows, read a chunk at a time."""

    def chunk(self, i: int, j: int) -> TeacherChunk:
        """The teacher at rows i:j."""
        ...


class LogitRows(NamedTuple):
    """The teacher's logits (M, V) (detached)."""

    logits: Tensor

    def chunk(self, i: int, j: int) -> TeacherChunk:
        return TeacherChunk(self.logits[i:j])


class HeadRows(NamedTuple):
    """The teacher's last hidden states (M, H_t) and lm_head weight (V, H_t) and bias (V,) | None."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None

    def chunk(self, i: int, j: int) -> TeacherChunk:
        return TeacherChunk(F.linear(self.hidden[i:j], self.weight, self.bias))


class CachedRows(NamedTuple):
    """An offline teacher (``TeacherTopK``) of the M labelled rows: a top-k cache rebuilt over ``vocab``
    tokens, or a sampled cache's rows as they are."""

    topk: TeacherTopK
    vocab: int

    def chunk(self, i: int, j: int) -> TeacherChunk:
        rows = self.topk.rows(i, j)
        if rows.samples:
            return TeacherChunk(None, None, rows.entropy.float(), rows)
        log_p = rows.log_probs(self.vocab)
        return TeacherChunk(log_p * self.topk.temperature, log_p, rows.entropy.float())


def denominator(count: Tensor, num_items_in_batch: int | Tensor | None, defer: bool) -> Tensor:
    """The loss's 0-dim float denominator: ``num_items_in_batch`` (> 0), else ``count`` (the valid tokens
    of this call, 0-dim). A count <= 0 is a ValueError; with ``defer`` a count tensor is not read back (no
    host sync): a count <= 0 then makes the denominator NaN, and the loss's terms non-finite."""
    if num_items_in_batch is None:
        return count.clamp_min(1).float()
    if not isinstance(num_items_in_batch, Tensor):
        check_positive("num_items_in_batch", num_items_in_batch)
    n = torch.as_tensor(num_items_in_batch, device=count.device).float()
    if n.numel() != 1:
        raise ValueError(f"num_items_in_batch must be one number, got shape {tuple(n.shape)}")
    return check_positive_values("num_items_in_batch", n.reshape(()), defer=defer)


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


class Rows(NamedTuple):
    """The labelled rows of a call. valid (M,) int64: their flat positions among the N = B*T rows, in
    order. labels (M,). seq_ids (M,): the sequence of each, of n_seq. denom: the reduction's denominator
    (0-dim). n: N. bad (2,) bool: the labels and label_index checks' flags (``INPUT_CHECKS`` order)."""

    valid: Tensor
    labels: Tensor
    seq_ids: Tensor
    n_seq: int
    denom: Tensor
    n: int
    bad: Tensor


def labelled_rows(
    labels: Tensor,
    shape: torch.Size,
    vocab: int,
    s: TokenLossSettings,
    label_index: Tensor | None,
    num_items_in_batch: int | Tensor | None,
    defer: bool,
) -> Rows:
    """The labelled rows of ``labels``, which must have exactly the student's row shape ``shape`` ((B, T)
    for sequence-level weights), each in [0, vocab) or ``s.ignore_index``. label_index: the flat positions
    the data collator computed on the host (``eakd.llm.data.collate``), checked on the device (rising
    strictly, at labelled tokens only, all of them); None: ``nonzero()`` (a host sync). A bad label or
    label_index is a ValueError (a host read); with ``defer`` it is clamped into range so nothing indexes
    out of bounds, and flagged in ``Rows.bad`` (no host read)."""
    if labels.shape != shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match the student's rows {tuple(shape)} (hidden states or "
            "logits without their last dim)"
        )
    if s.weight_level == "sequence" and labels.dim() < 2:
        raise ValueError("weight_level='sequence' needs (B, T) labels and hidden states/logits")
    flat = labels.reshape(-1)
    mask = flat != s.ignore_index
    out = mask & ((flat < 0) | (flat >= vocab))
    msg = f"labels must be in [0, {vocab}) or ignore_index={s.ignore_index}"
    bad_labels = check_flag(msg, out.any(), defer=defer)
    flat = torch.where(out, flat.clamp(0, vocab - 1), flat)
    if label_index is None:
        valid, bad_index = mask.nonzero().squeeze(1), torch.zeros((), dtype=torch.bool, device=flat.device)
    else:
        index = label_index.reshape(-1).to(flat.device, torch.long)
        valid = index.clamp(0, max(flat.numel() - 1, 0))
        ok = (valid == index).all() & (index.diff() > 0).all() & (mask.sum() == index.numel())
        if index.numel():
            ok = ok & mask[valid].all()
        msg = "label_index is not the flat positions of the labelled tokens, in order"
        bad_index = check_flag(msg, ~ok, defer=defer)
    n_seq = labels.shape[0] if labels.dim() > 1 else 1
    denom = denominator(mask.sum(), num_items_in_batch, defer)
    bad = torch.stack([bad_labels, bad_index])
    return Rows(valid, flat[valid], valid // labels.shape[-1], n_seq, denom, flat.numel(), bad)


def cached_weights(policy: Policy, zs: Tensor, h_t: Tensor, defer: bool) -> Weighted:
    """The built-in ``policy`` on student rows zs (n, V) against a known teacher entropy h_t (n,) in nats
    at the policy's tau: weights (n,), and the student entropy at that tau (None for "uniform")."""
    if policy.tau is None:  # uniform: no entropies
        return Weighted(policy.from_entropies(None, h_t, zs.shape[-1], defer=defer), None, None)
    _, h_s = policy.entropies(None, zs)  # the policy's entropy of zs (tau, standardisation)
    return Weighted(policy.from_entropies(h_s, h_t, zs.shape[-1], defer=defer), h_s, h_t)


def row_weights(policy: Policy, zs: Tensor, t: TeacherChunk, defer: bool) -> Weighted:
    """The policy's weights and entropies of student rows zs (n, V): from both logits, or with the
    teacher's known entropy. defer: the value checks' (``eakd.checks``)."""
    if t.entropy is not None and policy.rule is not None:
        return cached_weights(policy, zs, t.entropy, defer)
    return policy.compute(zs, t.logits, defer=defer)


def divergence_and_weights(
    s: TokenLossSettings, policy: Policy | None, zs: Tensor, t: TeacherChunk, compiled: bool, defer: bool
) -> tuple[Tensor, Weighted | None]:
    """(the per-token divergence (n,) float32 of student rows zs (n, V) against the teacher chunk, the
    policy's weights and entropies (n,) | None without a policy). compiled: both from one compiled pass
    (``eakd.losses.fused.fused_token_terms``, built-in divergences and policies); else the registered
    divergence and ``row_weights``. A sampled cache's divergence is its estimate (``sampled_divergence``,
    eager: it reads k tokens per row), whatever ``compiled``. defer: the value checks' (``eakd.checks``)."""
    if t.sampled is not None:
        c = t.sampled
        per_token = sampled_divergence(s, zs, c.ids, c.logprobs, c.tail_logmass, c.samples)  # type: ignore[arg-type]
        return per_token, None if policy is None else row_weights(policy, zs, t, defer)
    if not compiled:
        weighted = None if policy is None else row_weights(policy, zs, t, defer)
        return s.divergence_fn(defer)(zs, t.logits), weighted
    from eakd.losses.fused import fused_token_terms

    tau = None if policy is None else policy.tau
    cached = t.log_probs is not None
    with torch.profiler.record_function(COMPILED_RANGE):
        per_token, h_s, h_t = fused_token_terms(
            s.divergence, zs, None if cached else t.logits, temperature=s.temperature, tau=tau,
            h_t=t.entropy if cached and tau is not None else None, teacher_log_probs=t.log_probs,
            defer=defer, **s.divergence_settings(),
        )  # fmt: skip
    if policy is None:
        return per_token, None
    if h_t is None:  # uniform: no entropies
        ones = policy.from_entropies(None, per_token.detach(), zs.shape[-1], defer=defer)
        return per_token, Weighted(ones, None, None)
    return per_token, Weighted(policy.from_entropies(h_s, h_t, zs.shape[-1], defer=defer), h_s, h_t)


def sequence_mean(weights: Tensor, seq_ids: Tensor, n_seq: int) -> Tensor:
    """Weights of valid tokens (M,) -> the mean weight of each token's sequence (M,); seq_ids (M,) int64 in
    [0, n_seq) (n_seq: the batch's rows B, so no read-back of the ids)."""
    sums = torch.zeros(n_seq, device=weights.device).index_add_(0, seq_ids, weights)
    counts = torch.zeros(n_seq, device=weights.device).index_add_(0, seq_ids, torch.ones_like(weights))
    return (sums / counts.clamp_min(1))[seq_ids]


def finish_weights(weights: Tensor, rows: Rows, s: TokenLossSettings) -> Tensor:
    """The steps of the weights (M,) of all labelled rows that depend on other rows: the per-sequence mean
    (``weight_level="sequence"``), then the normalisation (``weight_norm``)."""
    if s.weight_level == "sequence":
        weights = sequence_mean(weights, rows.seq_ids, rows.n_seq)
    return normalise_weights(weights, None, s.weight_norm)


def depends_on_other_rows(s: TokenLossSettings, policy: Policy | None) -> bool:
    """Whether a row's weight needs the other rows' (``finish_weights`` does something)."""
    return policy is not None and (s.weight_level == "sequence" or s.weight_norm != "none")


def row_terms(
    zs: Tensor,
    labels: Tensor,
    per_token: Tensor,
    weights: Tensor | None,
    s: TokenLossSettings,
    denom: Tensor,
    defer: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(total, kd, ce) float32 0-dim of student rows zs (n, V) with labels (n,), their per-token divergence
    (n,) and detached weights (n,) | None, over the denominator ``denom``; CE at T = 1, never reweighted.
    defer: the value checks' (``eakd.checks``)."""
    kd = weighted_mean(per_token, weights, denominator=denom, defer=defer)
    total = s.kd_weight * kd
    ce = torch.zeros((), device=zs.device)
    if s.ce_weight > 0:
        ce = F.cross_entropy(zs.float(), labels, reduction="sum") / denom
        total = total + s.ce_weight * ce
    return total, kd, ce


def scatter(values: Tensor, rows: Rows) -> Tensor:
    """Values (M,) of the labelled rows -> (N,) float32 with 0 at the other rows."""
    return torch.zeros(rows.n, device=values.device).index_copy_(0, rows.valid, values.float())
