"""What a teacher's top-k must be, wherever it comes from (a cache file, a batch's ``TeacherTopK``, a user):
values some teacher could give (``impossible_values``) and the loss settings it was computed at
(``check_settings``)."""

from __future__ import annotations

import math

import torch

from eakd.llm.settings import TokenLossSettings

LOGPROB_SLACK = 1e-4  # float32 rounding above 0 tolerated in stored log-probabilities
TAIL_SLACK = 1e-3  # |log(top-k mass + tail mass)| tolerated: float32 sums over the vocabulary


def impossible_values(
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    entropy: torch.Tensor,
    tail_logmass: torch.Tensor | None,
    vocab_size: int,
) -> dict[str, torch.Tensor]:
    """{what is wrong: 0-dim bool flag on the device} for the values no teacher gives: ids (M, k) outside
    [0, V) or repeated within a row, log-probs (M, k) above 0 or summing above 1 (or below 1 when k = V), a
    tail mass (M,) that with the top-k does not make 1, entropies (M,) outside [0, ln V] (nats). NaN raises
    no flag here (the loss's non-finite check reports it). Device operations only: no host read."""
    slack = LOGPROB_SLACK
    lse = logprobs.float().logsumexp(-1)
    ln_v = math.log(vocab_size) if vocab_size > 0 else 0.0
    flags = {
        f"ids outside [0, {vocab_size})": ((ids < 0) | (ids >= vocab_size)).any(),
        "an id repeated within a token's top-k": (ids.sort(-1).values.diff(dim=-1) == 0).any(),
        "log-probabilities above 0": (logprobs > slack).any(),
        "top-k probabilities summing above 1": (lse > slack).any(),
        f"entropies outside [0, ln V = {ln_v:.4g}] nats": (
            (entropy < -slack) | (entropy > ln_v * (1 + 1e-5) + slack)
        ).any(),
    }
    if ids.shape[-1] == vocab_size:  # no token outside the top-k to hold any rest
        flags["top-k over the whole vocabulary not summing to 1"] = (lse.abs() > TAIL_SLACK).any()
    if tail_logmass is not None:  # the exact tail: top-k and tail hold the whole mass
        total = torch.logaddexp(lse, tail_logmass.float())
        flags["top-k and tail masses not summing to 1"] = (total.abs() > TAIL_SLACK).any()
    return flags


def check_settings(temperature: float, tau: float, s: TokenLossSettings) -> None:
    """A cache of log-probs at ``temperature`` and entropies at ``tau`` must match the loss settings ``s``
    (the temperature; the policy's tau, built-in policies only)."""
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
