"""A sparse teacher (a cache's k tokens per labelled token) in the loss: the top-k rebuild
(``topk_log_probs``), the settings a cache must match (``check_settings``), and the sampled cache: per
labelled token, the teacher's top few tokens kept exactly and the rest of its distribution represented by
tokens drawn from it, so that the divergence estimated from the cache is unbiased (a top-k cache spreads
the rest evenly instead, which biases the student; docs/llm.md).

A cache row holds k = exact + samples tokens (``eakd.llm.cache``'s layout, kind "sampled"): the teacher's
top ``exact`` tokens, then ``samples`` independent draws from the teacher's distribution at the
distillation temperature T restricted to the other tokens, each with its exact teacher log-probability
log p_v, and the exact log-mass outside the top ``exact`` (tail_logmass, log r). The estimate of the
teacher gives slot j the mass pi_j = p_j for an exact slot and r / samples for a drawn one (a token drawn
twice gets both), so E[mass on v] = p_v for every v and the masses sum to 1. A divergence that is an
expectation under the teacher, D = sum_v p_v g(log q_v, log p_v) (``teacher_expectation`` of
``eakd.losses.token``: fkl, skl), is estimated by D_hat = sum_j pi_j g(log q_j, log p_j): E[D_hat] = D and
E[grad D_hat] = grad D for every student, as g is evaluated at the exact log p_j and only the masses are
random. The others refuse a sampled cache (``check_sampled``).
"""

from __future__ import annotations

import math

import torch

from eakd.llm.settings import TokenLossSettings
from eakd.losses.registry import get_loss

Tensor = torch.Tensor
KINDS = ("topk", "sampled")  # a cache's kind: samples == 0, samples > 0
DRAW_ROWS = 64  # tokens per float64 cumulative sum when drawing (64 x V x 8 bytes)


def check_sampled(s: TokenLossSettings) -> None:
    """The loss ``s`` must be able to train from a sampled cache: its divergence must have a
    ``teacher_expectation`` (fkl, skl); ValueError in one line otherwise."""
    if getattr(get_loss(s.divergence), "teacher_expectation", None) is None:
        raise ValueError(
            f"divergence {s.divergence!r} cannot train from a sampled teacher cache: it is not an "
            "expectation under the teacher (it weighs tokens by the student's probability, which the "
            "teacher's draws miss); use fkl or skl, or a top-k cache (eakd llm cache --sparse topk)"
        )


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


def check_settings(temperature: float, tau: float, s: TokenLossSettings, samples: int = 0) -> None:
    """A cache of log-probs at ``temperature`` and entropies at ``tau`` (with ``samples`` drawn tokens per
    row) must match the loss settings ``s`` (the temperature; the policy's tau, built-in policies only; a
    divergence that can use drawn tokens, ``eakd.llm.sparse.check_sampled``)."""
    if samples:
        check_sampled(s)
    if abs(temperature - s.temperature) > 1e-6:
        raise ValueError(
            f"the teacher cache holds log-probs at temperature {temperature}, the loss uses {s.temperature}; "
            "write the cache again with `eakd llm cache` for this train.temperature"
        )
    policy = s.policy()
    if policy is not None and policy.rule is None:
        raise ValueError("a teacher cache works with the built-in weight policies, not custom callables")
    if policy is not None and policy.tau is not None and abs(tau - policy.tau) > 1e-6:
        raise ValueError(
            f"the teacher cache holds entropies at tau {tau}, the loss's policy uses tau {policy.tau}; "
            "write the cache again with `eakd llm cache` for this train.tau"
        )


def draw_uniforms(counts: list[int], samples: int, generator: torch.Generator) -> Tensor:
    """(sum(counts), samples) float64 uniforms in [0, 1), drawn row by row (counts: labelled tokens per
    row, in order) from ``generator``: the same draws whatever the batching of the rows."""
    parts = [torch.rand(n, samples, generator=generator, dtype=torch.float64) for n in counts]
    return torch.cat(parts) if parts else torch.empty(0, samples, dtype=torch.float64)


def draw_tail(log_p: Tensor, exact_ids: Tensor, uniforms: Tensor) -> Tensor:
    """Token ids (n, S) int64 drawn by inverse CDF from the teacher log_p (n, V) restricted to the tokens
    outside exact_ids (n, e) (renormalised), one per uniform of uniforms (n, S) (float64, on any device)."""
    out = []
    for i in range(0, log_p.shape[0], DRAW_ROWS):
        p = log_p[i : i + DRAW_ROWS].double().exp().scatter_(-1, exact_ids[i : i + DRAW_ROWS], 0.0)
        cdf = p.cumsum(-1)
        u = uniforms[i : i + DRAW_ROWS].to(cdf.device) * cdf[:, -1:]
        out.append(torch.searchsorted(cdf, u, right=True).clamp_max(log_p.shape[-1] - 1))
    return torch.cat(out) if out else exact_ids.new_empty(0, uniforms.shape[1])


def sparse_rows(log_p: Tensor, top_k: int, samples: int, uniforms: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A cache's rows from the teacher's log-probabilities log_p (n, V) at T: (ids (n, top_k) int64, their
    log-probs (n, top_k), tail_logmass (n,)), the top top_k - samples ids then ``samples`` drawn by
    ``draw_tail`` from uniforms (n, samples); tail_logmass: the log-mass outside the top ids."""
    ids = log_p.topk(top_k - samples, dim=-1).indices
    tail = log_p.scatter(-1, ids, -torch.inf).logsumexp(-1)
    if samples:
        ids = torch.cat([ids, draw_tail(log_p, ids, uniforms)], dim=1)
    return ids, log_p.gather(-1, ids), tail


def slot_masses(logprobs: Tensor, tail_logmass: Tensor, samples: int) -> Tensor:
    """(n, k) float32 teacher mass the estimate gives each slot: p_j for the first k - samples (exact)
    slots, exp(tail_logmass) / samples for each drawn one."""
    exact = logprobs[:, : logprobs.shape[1] - samples].float().exp()
    drawn = (tail_logmass.float().exp() / samples)[:, None].expand(-1, samples)
    return torch.cat([exact, drawn], dim=1)


def sampled_divergence(
    s: TokenLossSettings, zs: Tensor, ids: Tensor, logprobs: Tensor, tail_logmass: Tensor, samples: int
) -> Tensor:
    """Per-token (n,) float32 unbiased estimate of the divergence of ``s`` between the teacher of a sampled
    cache (ids (n, k), their teacher log-probs (n, k) at T, tail_logmass (n,), the last ``samples`` slots
    drawn) and the student logits zs (n, V): sum_j pi_j g(log q_j, log p_j), differentiable in zs."""
    check_sampled(s)
    g = get_loss(s.divergence).teacher_expectation
    log_q = torch.log_softmax(zs.float() / s.temperature, dim=-1).gather(-1, ids.long())
    terms = g(log_q, logprobs.float(), **s.divergence_settings())
    return (slot_masses(logprobs, tail_logmass, samples) * terms).sum(-1)
