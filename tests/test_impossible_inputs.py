"""Impossible inputs refused where they enter (issue 24): a teacher top-k no teacher gives, negative or NaN
weights, values of the wrong type; and the one rule for a batch whose hard labels are all ignored."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_llm_cache import _case

import eakd
from eakd.llm import TokenLossSettings, chunked_distill_loss, distill_loss_from_logits
from eakd.llm.settings import INPUT_CHECKS
from eakd.report import write_report

SETTINGS = TokenLossSettings(tau=2.0)


def _bad_topks() -> dict[str, object]:
    """{what the error names: a TeacherTopK with that impossible value}, from test_llm_cache's valid case."""
    topk = _case()[-1]
    ids, lp, ent = topk.ids.clone(), topk.logprobs.clone(), topk.entropy.clone()
    high = ent.index_fill(0, torch.tensor([0]), 4.0)  # ln 23 = 3.135
    dup = ids.clone()
    dup[1, 1] = dup[1, 0]
    far = ids.clone()
    far[2, 0] = topk.vocab_size
    neg = ids.clone()
    neg[0, 0] = -1
    up = lp.clone()
    up[0, 0] = 0.5
    heavy = torch.full_like(lp, -0.1)  # 5 tokens of probability 0.9 each
    return {
        "entropies outside": topk._replace(entropy=ent - 10.0),
        r"entropies outside \[0, ln V = 3.135\]": topk._replace(entropy=high),
        "log-probabilities above 0": topk._replace(logprobs=up),
        "top-k probabilities summing above 1": topk._replace(logprobs=heavy, tail_logmass=None),
        "top-k and tail masses not summing to 1": topk._replace(tail_logmass=topk.tail_logmass - 1.0),
        "an id repeated within a token's top-k": topk._replace(ids=dup),
        r"ids outside \[0, 23\)": topk._replace(ids=far),
        r"ids outside \[0, 23\) ": topk._replace(ids=neg),
    }


@pytest.mark.parametrize("what", list(_bad_topks()))
@pytest.mark.parametrize("path", ["chunked", "dense"])
def test_an_impossible_teacher_topk_is_refused(what: str, path: str) -> None:
    """Eager: a ValueError naming the impossible value. Deferred (training loops): no error, no host read;
    the teacher-cache input flag is set, and the ids are clamped so nothing indexes out of range."""
    hidden, weight, _, labels, _ = _case()
    bad = _bad_topks()[what]

    def loss(defer: bool = False):
        if path == "chunked":
            return chunked_distill_loss(
                hidden, weight, labels, teacher_topk=bad, settings=SETTINGS, defer=defer
            )
        return distill_loss_from_logits(
            hidden @ weight.t(), None, labels, SETTINGS, teacher_topk=bad, defer=defer
        )

    with pytest.raises(ValueError, match=f"the teacher top-k holds impossible values: {what.strip()}"):
        loss()
    out = loss(defer=True)
    assert out.invalid is not None and out.invalid.tolist() == [k == "teacher_cache" for k in INPUT_CHECKS]


def test_the_valid_topk_passes_and_k_above_v_is_refused() -> None:
    hidden, weight, _, labels, topk = _case()
    out = chunked_distill_loss(hidden, weight, labels, teacher_topk=topk, settings=SETTINGS)
    assert math.isfinite(out.loss.item()) and out.kd.item() >= 0
    small = topk._replace(vocab_size=4)  # k = 5 ids per token from a vocabulary of 4
    with pytest.raises(ValueError, match="holds k=5 ids per token, more than its vocabulary V=4"):
        four = torch.where(labels >= 0, labels % 4, labels)
        chunked_distill_loss(hidden, weight[:4], four, teacher_topk=small, settings=SETTINGS)


def test_a_cache_file_with_repeated_ids_is_refused() -> None:
    topk = _case()[-1]
    ids = topk.ids.clone()
    ids[0, 1] = ids[0, 0]
    with pytest.raises(ValueError, match="impossible values: an id repeated"):
        eakd.llm.cache.TeacherCache(
            ids, topk.logprobs, topk.tail_logmass, topk.entropy, torch.tensor([0, ids.shape[0]]),
            topk.vocab_size, ids.shape[1], 1.0, 2.0, "t", "f",
        )  # fmt: skip


def _negative(student_logits, teacher_logits, mask=None):
    return teacher_logits[..., 0] - 10.0


@pytest.mark.parametrize("fill", [-1.0, math.nan, math.inf])
def test_a_user_policy_giving_negative_or_nonfinite_weights_is_refused(fill: float) -> None:
    def policy(student_logits, teacher_logits, mask=None):
        return torch.ones(teacher_logits.shape[:-1]).index_fill(0, torch.tensor([2]), fill)

    zs, zt = torch.randn(6, 5), torch.randn(6, 5)
    with pytest.raises(ValueError, match=r"weights of policy 'policy' must be finite and >= 0; 1 of 6 are"):
        eakd.DistillLoss("kd", policy, temperature=4.0)(zs, zt)
    loss = eakd.DistillLoss("kd", policy, temperature=4.0, sync_checks=False)  # a training loop's: no sync
    out = loss(zs, zt)  # the weight became NaN: the term is non-finite, which the runner's guard stops at
    assert torch.isnan(loss.last["weights"][2]) and not torch.isfinite(out["loss_kd"])
    hidden, weight, zt, labels, _ = _case()  # the token loss: the same check
    with pytest.raises(ValueError, match="weights of policy '_negative' must be finite and >= 0"):
        distill_loss_from_logits(hidden @ weight.t(), zt, labels, TokenLossSettings(weighting=_negative))


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        (torch.tensor([1.0, -0.5, 1.0]), ValueError, r"weights must be finite and >= 0; 1 of 3 are not"),
        (torch.tensor([1.0, math.nan, 1.0]), ValueError, r"weights must be finite and >= 0; 1 of 3 are not"),
        ([1.0, 1.0, 1.0], TypeError, "weights must be a torch.Tensor, got list"),
    ],
)
def test_weighted_mean_refuses_impossible_weights(weights, error, message) -> None:
    with pytest.raises(error, match=message):
        eakd.weighted_mean(torch.ones(3), weights)


def test_weighted_mean_and_weights_refuse_what_is_not_a_tensor() -> None:
    with pytest.raises(TypeError, match=r"values must be a torch\.Tensor, got list"):
        eakd.weighted_mean([1.0, 2.0])
    with pytest.raises(TypeError, match=r"mask must be a torch\.Tensor, got list"):
        eakd.weighted_mean(torch.ones(2), mask=[True, False])
    with pytest.raises(TypeError, match=r"student logits must be a torch\.Tensor, got list"):
        eakd.ea_weights([[1.0, 2.0]], torch.ones(1, 2))
    meta = torch.zeros(2, 3, device="meta")
    with pytest.raises(ValueError, match="the inputs are on the meta device, which holds no values"):
        eakd.ea_weights(meta, meta)


@pytest.mark.parametrize(
    ("weighting", "error", "message"),
    [
        (3, TypeError, "weighting must be a policy name, a callable or None, got int 3"),
        (["ea"], TypeError, "got list"),
        ("eaa", ValueError, "unknown weight policy 'eaa'"),
    ],
)
def test_get_policy_refuses_what_is_no_policy(weighting, error, message) -> None:
    with pytest.raises(error, match=message):
        eakd.get_policy(weighting)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"ignore_index": "x"}, "ignore_index must be int, got str 'x'"),
        ({"ignore_index": True}, "ignore_index must be int, got bool True"),
        ({"divergence": 3}, "divergence must be str, got int 3"),
        ({"kd_weight": "1"}, "kd_weight must be a number, got str '1'"),
    ],
)
def test_token_settings_refuse_values_of_the_wrong_type(kw, message) -> None:
    with pytest.raises(TypeError, match=message):
        TokenLossSettings(**kw)


def test_token_settings_refuse_a_fused_value_it_does_not_take() -> None:
    """fused takes true, false or "auto" (main's default), so a string it does not know is a value error."""
    with pytest.raises(ValueError, match="fused must be true, false or 'auto', got 'yes'"):
        TokenLossSettings(fused="yes")


def test_a_callable_weighting_is_not_given_the_default_tau() -> None:
    """No tau is pushed on a callable that takes none (tau defaults to None); one the user sets is checked."""

    def plain(student_logits, teacher_logits, mask=None):
        return torch.ones(teacher_logits.shape[:-1])

    def with_tau(student_logits, teacher_logits, mask=None, tau=1.0):
        return torch.full(teacher_logits.shape[:-1], tau)

    assert TokenLossSettings(weighting=plain).policy().settings == {}
    assert TokenLossSettings(weighting=with_tau).policy().settings == {}
    assert TokenLossSettings(weighting=with_tau, tau=2.0).policy().settings == {"tau": 2.0}
    with pytest.raises(ValueError, match=r"weight policy 'plain' takes no setting\(s\) \['tau'\]"):
        TokenLossSettings(weighting=plain, tau=3.0)


def test_all_ignored_targets_give_a_zero_hard_label_loss_on_both_paths() -> None:
    """One rule: the CE term of a batch with no valid target is 0 (classification and tokens), not NaN."""
    zs, zt = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
    ignored = torch.full((4,), -100)
    out = eakd.DistillLoss("kd", "ea", ce_weight=1.0, temperature=4.0)(zs, zt, ignored)
    assert out["loss_ce"].item() == 0.0 and torch.isfinite(out["loss_kd"])
    target = torch.tensor([0, -100, 3, -100])
    plain = torch.nn.functional.cross_entropy(zs, target)  # torch's mean over the valid targets
    assert torch.allclose(eakd.losses.cross_entropy(zs, target), plain)
    hidden, weight, zt_tok, labels, _ = _case()
    token = distill_loss_from_logits(
        hidden @ weight.t(), zt_tok, torch.full_like(labels, -100), TokenLossSettings(ce_weight=1.0)
    )
    assert token.ce.item() == 0.0 and token.kd.item() == 0.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("epoch,lr,train_loss\n1,0.1,abc\n", r"line 2: train_loss='abc' is not a number"),
        ("hello world\nfoo\n", r"lacks the column\(s\) epoch, lr"),
        ("epoch,lr\n1,0.1,7\n", "line 2 has another number of fields than the header"),
        (bytes(range(128, 256)), "cannot be read as CSV"),
    ],
)
def test_report_refuses_a_malformed_metrics_file(tmp_path: Path, content, message) -> None:
    path = tmp_path / "metrics.csv"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(ValueError, match=message):
        write_report(tmp_path)
