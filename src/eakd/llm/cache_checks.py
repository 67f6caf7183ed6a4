"""What a teacher's top-k must hold, wherever it comes from (a cache file, a batch's ``TeacherTopK``, a
user): values some teacher could give (``impossible_values``). The loss settings it must match:
``eakd.llm.sparse.check_settings``."""

from __future__ import annotations

import math

import torch

LOGPROB_SLACK = 1e-4  # float32 rounding above 0 tolerated in stored log-probabilities
TAIL_SLACK = 1e-3  # |log(top-k mass + tail mass)| tolerated: float32 sums over the vocabulary


def impossible_values(
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    entropy: torch.Tensor,
    tail_logmass: torch.Tensor | None,
    vocab_size: int,
    samples: int = 0,
) -> dict[str, torch.Tensor]:
    """{what is wrong: 0-dim bool flag on the device} for the values no teacher gives: ids (M, k) outside
    [0, V), log-probs (M, k) above 0, and over the exact slots (the first k - samples; the last ``samples``
    of a sampled cache are draws, which may repeat): ids repeated within a row, log-probs summing above 1
    (or below 1 when they cover V), a tail mass (M,) that with them does not make 1; entropies (M,) outside
    [0, ln V] (nats). NaN raises no flag here (the loss's non-finite check reports it). Device operations
    only: no host read."""
    slack = LOGPROB_SLACK
    exact = ids.shape[-1] - samples
    lse = logprobs[..., :exact].float().logsumexp(-1)
    ln_v = math.log(vocab_size) if vocab_size > 0 else 0.0
    flags = {
        f"ids outside [0, {vocab_size})": ((ids < 0) | (ids >= vocab_size)).any(),
        "an id repeated within a token's top-k": (ids[..., :exact].sort(-1).values.diff(dim=-1) == 0).any(),
        "log-probabilities above 0": (logprobs > slack).any(),
        "top-k probabilities summing above 1": (lse > slack).any(),
        f"entropies outside [0, ln V = {ln_v:.4g}] nats": (
            (entropy < -slack) | (entropy > ln_v * (1 + 1e-5) + slack)
        ).any(),
    }
    if exact == vocab_size:  # no token outside the top-k to hold any rest
        flags["top-k over the whole vocabulary not summing to 1"] = (lse.abs() > TAIL_SLACK).any()
    if tail_logmass is not None:  # the exact tail: top-k and tail hold the whole mass
        total = torch.logaddexp(lse, tail_logmass.float())
        flags["top-k and tail masses not summing to 1"] = (total.abs() > TAIL_SLACK).any()
    return flags
