"""The chunked fused-linear loss equals a dense reference written here, in value and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import eakd
from eakd.llm import TokenLossSettings, chunked_distill_loss, distill_loss_from_logits
from eakd.losses import get_loss
from eakd.losses.token import token_mask

B, T, H, HT, V = 2, 7, 8, 12, 23


def _inputs(dtype: torch.dtype = torch.float32, seed: int = 0, vocab: int = V, t_vocab: int = V):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, H, generator=g) * 0.8).to(dtype).requires_grad_()
    t_hidden = torch.randn(B, T, HT, generator=g).to(dtype)
    t_weight = (torch.randn(t_vocab, HT, generator=g) * 0.8).to(dtype)
    labels = torch.randint(0, min(vocab, t_vocab) - 2, (B, T), generator=g)
    labels[0, :2] = -100  # prompt tokens
    labels[1, 5:] = -100  # padding
    return hidden, weight, t_hidden, t_weight, labels


def dense_reference(hidden, weight, t_hidden, t_weight, labels, s: TokenLossSettings, denom=None, v=None):
    """Materialised logits and the public per-token losses, weights and reduction."""
    v = v or weight.shape[0]
    zs = hidden @ weight[:v].t()
    zt = (t_hidden @ t_weight[:v].t()).detach()
    mask = token_mask(labels)
    kw = {"beta": s.beta} if s.divergence == "jsd" else {"alpha": s.alpha} if "skl" in s.divergence else {}
    per_token = get_loss(s.divergence)(zs, zt, temperature=s.temperature, **kw)
    w = None
    if s.weighting == "ea":
        w = eakd.ea_weights(zs, zt, tau=s.tau, mask=mask)
        if s.weight_level == "sequence":
            seq = (w * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
            w = seq.expand_as(w) * mask
        if s.weight_norm == "mean":  # the plain reference: w / mean of w over the valid tokens
            w = w / w[mask].mean()
    loss = s.kd_weight * eakd.weighted_mean(per_token, w, mask, denominator=denom)
    if s.ce_weight:
        ce = F.cross_entropy(zs.float().flatten(0, 1), labels.flatten(), reduction="sum")
        loss = loss + s.ce_weight * ce / (mask.sum() if denom is None else denom)
    return loss


def _grads(loss: torch.Tensor, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, xs)


DIVERGENCES = [("fkl", {}), ("rkl", {}), ("jsd", {"beta": 0.3}), ("skl", {}), ("srkl", {}), ("tvd", {})]


@pytest.mark.parametrize(("divergence", "kw"), DIVERGENCES)
@pytest.mark.parametrize("weighting", ["ea", None])
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_chunked_equals_dense_fp32(divergence: str, kw: dict, weighting: str | None, chunk_size: int) -> None:
    s = TokenLossSettings(divergence=divergence, weighting=weighting, temperature=1.5, ce_weight=0.3, **kw)
    hidden, weight, t_hidden, t_weight, labels = _inputs()
    want = dense_reference(hidden, weight, t_hidden, t_weight, labels, s)
    out = chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight, settings=s, chunk_size=chunk_size)
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)
    for got, ref in zip(_grads(out.loss, hidden, weight), _grads(want, hidden, weight), strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert (out.weights is None) == (weighting is None)


@pytest.mark.parametrize(("divergence", "kw"), DIVERGENCES)
def test_chunked_equals_dense_bf16(divergence: str, kw: dict) -> None:
    s = TokenLossSettings(divergence=divergence, **kw)
    hidden, weight, t_hidden, t_weight, labels = _inputs(torch.bfloat16, seed=1)
    want = dense_reference(hidden, weight, t_hidden, t_weight, labels, s)
    out = chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight, settings=s, chunk_size=4)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, want, atol=1e-4, rtol=1e-4)
    for got, ref in zip(_grads(out.loss, hidden, weight), _grads(want, hidden, weight), strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("chunk_size", [3, 100])
def test_sequence_level_weights(chunk_size: int) -> None:
    s = TokenLossSettings(weight_level="sequence", tau=3.0)
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=2)
    want = dense_reference(hidden, weight, t_hidden, t_weight, labels, s)
    out = chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight, settings=s, chunk_size=chunk_size)
    torch.testing.assert_close(out.loss, want)
    for got, ref in zip(_grads(out.loss, hidden, weight), _grads(want, hidden, weight), strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    w = out.weights.view(B, T)
    assert torch.allclose(w[1, :5], w[1, 0].expand(5)) and w[1, 5:].abs().max() == 0
    dense = distill_loss_from_logits(hidden @ weight.t(), t_hidden @ t_weight.t(), labels, s)
    torch.testing.assert_close(dense.loss, want)
    torch.testing.assert_close(dense.weights, out.weights)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("weight_level", ["token", "sequence"])
def test_weight_norm_mean_equals_the_plain_reference(chunk_size: int, weight_level: str) -> None:
    """weight_norm="mean": value and gradients of the loss with w / mean(w) over valid tokens, on both
    paths; ignored tokens keep weight 0; the normalised weights average 1 over the valid tokens."""
    s = TokenLossSettings(weight_norm="mean", weight_level=weight_level, ce_weight=0.2, temperature=1.5)
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=3)
    want = dense_reference(hidden, weight, t_hidden, t_weight, labels, s)
    want_grads = _grads(want, hidden, weight)
    mask = token_mask(labels).reshape(-1)
    fused = chunked_distill_loss(
        hidden, weight, labels, t_hidden, t_weight, settings=s, chunk_size=chunk_size
    )
    zs, zt = hidden @ weight.t(), (t_hidden @ t_weight.t()).detach()
    dense = distill_loss_from_logits(zs, zt, labels, settings=s)
    for out in (fused, dense):
        torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)
        for got, ref in zip(_grads(out.loss, hidden, weight), want_grads, strict=True):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
        assert out.weights is not None and (out.weights[~mask] == 0).all()
        torch.testing.assert_close(out.weights[mask].mean(), torch.tensor(1.0))
    plain = distill_loss_from_logits(zs, zt, labels, settings=TokenLossSettings(weight_level=weight_level))
    assert plain.weights is not None and abs(float(plain.weights[mask].mean()) - 1) > 0.1  # it did change


def test_padded_vocabularies_are_aligned() -> None:
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=3, vocab=V + 9, t_vocab=V + 1)
    s = TokenLossSettings(ce_weight=1.0)
    want = dense_reference(hidden, weight, t_hidden, t_weight, labels, s, v=V)
    out = chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight, settings=s, vocab_size=V)
    torch.testing.assert_close(out.loss, want)
    (g_w,) = _grads(out.loss, weight)
    (g_ref,) = _grads(want, weight)
    torch.testing.assert_close(g_w, g_ref)
    assert g_w[V:].abs().max() == 0
    with pytest.raises(ValueError, match="student has 32, teacher has 24"):
        chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight)
    with pytest.raises(ValueError, match="exceeds"):
        chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight, vocab_size=V + 2)


def test_teacher_logits_bias_and_gradient_accumulation() -> None:
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=4)
    bias = torch.randn(V, requires_grad=True)
    t_logits = t_hidden @ t_weight.t()
    s = TokenLossSettings(divergence="rkl", ce_weight=0.5)
    full = chunked_distill_loss(
        hidden, weight, labels, student_bias=bias, teacher_logits=t_logits, settings=s
    )
    dense = distill_loss_from_logits(hidden @ weight.t() + bias, t_logits, labels, s)
    torch.testing.assert_close(full.loss, dense.loss)
    for got, ref in zip(
        _grads(full.loss, hidden, weight, bias), _grads(dense.loss, hidden, weight, bias), strict=True
    ):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    # two micro-batches normalised by the tokens of both sum to the full-batch loss
    n_items = int(token_mask(labels).sum())
    parts = [
        chunked_distill_loss(
            hidden[i : i + 1],
            weight,
            labels[i : i + 1],
            student_bias=bias,
            teacher_logits=t_logits[i : i + 1],
            settings=s,
            num_items_in_batch=n_items,
        ).loss
        for i in range(B)
    ]
    torch.testing.assert_close(sum(parts), full.loss)


def test_ignored_tokens_get_no_gradient_and_stats_are_reported() -> None:
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=5)
    out = chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight, chunk_size=4)
    (g,) = _grads(out.loss, hidden)
    mask = token_mask(labels)
    assert g[~mask].abs().max() == 0 and g[mask].abs().max() > 0
    assert out.weights.shape == (B * T,) and out.per_token.shape == (B * T,)
    assert 0 <= out.weights.max() <= math.log(V)
    torch.testing.assert_close(out.kd, out.loss.detach())
    fused = chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight)
    zs, zt = hidden @ weight.t(), t_hidden @ t_weight.t()
    dense = distill_loss_from_logits(zs, zt, labels)
    torch.testing.assert_close(fused.h_t, dense.h_t)
    torch.testing.assert_close(fused.h_s, dense.h_s)
    torch.testing.assert_close(fused.h_t, (eakd.entropy(zt, tau=3.0) * mask).flatten())
    all_ignored = torch.full_like(labels, -100)
    empty = chunked_distill_loss(hidden, weight, all_ignored, t_hidden, t_weight)
    assert empty.loss.item() == 0.0


def test_bad_inputs() -> None:
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=6)
    with pytest.raises(ValueError, match="give one teacher"):
        chunked_distill_loss(hidden, weight, labels)
    with pytest.raises(ValueError, match="labels must be in"):
        chunked_distill_loss(hidden, weight, labels + V, t_hidden, t_weight)
    with pytest.raises(ValueError, match=r"unknown distillation loss .kl. \(did you mean .skl.\?\)"):
        TokenLossSettings(divergence="kl")
    with pytest.raises(ValueError, match="unknown weight policy"):
        TokenLossSettings(weighting="entropy")
    with pytest.raises(ValueError, match="weight_level"):
        TokenLossSettings(weight_level="batch")


@pytest.mark.parametrize("chunk_size", [4, 512])
@pytest.mark.parametrize("weight_level", ["token", "sequence"])
def test_entropies_are_the_policys_at_its_default_tau(chunk_size: int, weight_level: str) -> None:
    """tau None: the weights and the entropies are at the policy's default tau (EA: 3), not at 1."""
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=8)
    s = TokenLossSettings(tau=None, weight_level=weight_level)
    policy = s.policy()
    assert policy is not None and policy.tau == 3.0
    mask = token_mask(labels).flatten()
    zs, zt = hidden @ weight.t(), t_hidden @ t_weight.t()
    fused = chunked_distill_loss(
        hidden, weight, labels, t_hidden, t_weight, settings=s, chunk_size=chunk_size
    )
    dense = distill_loss_from_logits(zs, zt, labels, s)
    for out in (fused, dense):
        torch.testing.assert_close(out.h_t, eakd.entropy(zt, policy.tau).flatten() * mask)
        torch.testing.assert_close(out.h_s, eakd.entropy(zs, policy.tau).flatten() * mask)
    if weight_level == "token":
        torch.testing.assert_close(fused.weights, eakd.ea_weights(zs, zt, tau=3.0).flatten() * mask)
    unweighted = TokenLossSettings(weighting=None)
    for w in ("uniform", None):
        out = chunked_distill_loss(
            hidden, weight, labels, t_hidden, t_weight, settings=TokenLossSettings(weighting=w)
        )
        assert out.h_t is None and out.h_s is None
    assert distill_loss_from_logits(zs, zt, labels, unweighted).h_t is None


@pytest.mark.slow  # importing trl takes 5-20 s
def test_jsd_matches_trl() -> None:
    gkd = pytest.importorskip("trl.experimental.gkd", reason="trl with the GKD trainer is not installed")
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=7)
    for beta in (0.0, 0.5, 1.0):
        s = TokenLossSettings(divergence="jsd", beta=beta, weighting=None, temperature=2.0)
        out = chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight, settings=s, chunk_size=5)
        want = gkd.GKDTrainer.generalized_jsd_loss(
            hidden @ weight.t(), t_hidden @ t_weight.t(), labels=labels, beta=beta, temperature=2.0
        )
        torch.testing.assert_close(out.loss, want)
        for got, ref in zip(_grads(out.loss, hidden, weight), _grads(want, hidden, weight), strict=True):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_teacher_shapes_are_checked_on_every_path() -> None:
    """No broadcasting and no pairing with the wrong rows: every teacher form must match the student."""
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=9)
    zs, zt = hidden @ weight.t(), t_hidden @ t_weight.t()
    rows = "does not match the student's rows"
    for bad in (zt.reshape(B * T, V), zt[:, :-1], zt[:1]):  # flattened, fewer tokens, fewer sequences
        with pytest.raises(ValueError, match=rows):
            chunked_distill_loss(hidden, weight, labels, teacher_logits=bad)
    for bad in (zt[:, :1], zt[:1, :1]):  # (B, 1, V) and (1, 1, V) against (B, T, V)
        with pytest.raises(ValueError, match="differ in shape"):
            distill_loss_from_logits(zs, bad, labels)
    with pytest.raises(ValueError, match=rows):
        chunked_distill_loss(hidden, weight, labels, t_hidden[:, :1], t_weight)
    with pytest.raises(ValueError, match=rf"teacher_weight \({V}, {HT + 1}\) is not \(V, {HT}\)"):
        chunked_distill_loss(hidden, weight, labels, t_hidden, torch.randn(V, HT + 1))
    with pytest.raises(ValueError, match=r"teacher_bias \(3,\) is not"):
        chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight, teacher_bias=torch.zeros(3))
    with pytest.raises(ValueError, match=r"student_weight \(23, 9\) is not \(V, 8\)"):
        chunked_distill_loss(hidden, torch.randn(V, H + 1), labels, t_hidden, t_weight)
    with pytest.raises(ValueError, match=r"labels .* do not match"):
        chunked_distill_loss(hidden, weight, labels.reshape(-1), t_hidden, t_weight)
    with pytest.raises(ValueError, match=r"labels .* do not match"):
        distill_loss_from_logits(zs, zt, labels[:, :-1])
    sequence = TokenLossSettings(weight_level="sequence")
    with pytest.raises(ValueError, match=r"weight_level='sequence' needs \(B, T\) labels"):
        distill_loss_from_logits(zs.reshape(B * T, V), zt.reshape(B * T, V), labels.reshape(-1), sequence)


@pytest.mark.parametrize("count", [0, -3, torch.tensor(0), torch.tensor(-1.0)])
def test_num_items_in_batch_must_be_positive(count: int | torch.Tensor) -> None:
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=10)
    with pytest.raises(ValueError, match="num_items_in_batch must be > 0"):
        chunked_distill_loss(hidden, weight, labels, t_hidden, t_weight, num_items_in_batch=count)
    with pytest.raises(ValueError, match="num_items_in_batch must be > 0"):
        distill_loss_from_logits(hidden @ weight.t(), t_hidden @ t_weight.t(), labels, None, count)
    if isinstance(count, torch.Tensor):  # the trainer's form: not read back, the kd term turns NaN instead
        out = chunked_distill_loss(
            hidden, weight, labels, t_hidden, t_weight, num_items_in_batch=count, defer=True
        )
        assert out.nonfinite().tolist() == [False, True, False]


def nan_policy(student_logits, teacher_logits, mask=None, **settings):
    """A custom weight policy gone wrong."""
    return torch.full(teacher_logits.shape[:-1], float("nan"))


@pytest.mark.parametrize("fused", [True, False])
def test_nonfinite_inputs_never_give_a_silent_nan_loss(fused: bool) -> None:
    """NaN inputs with weighting=None or "ea", and a custom policy returning NaN: a ValueError naming the
    term; with defer=True (the trainer) the output's device-side flags say which term went bad."""
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=11)

    def loss(s: TokenLossSettings, h: torch.Tensor = hidden, th: torch.Tensor = t_hidden, defer=False):
        if fused:
            return chunked_distill_loss(h, weight, labels, th, t_weight, settings=s, defer=defer)
        return distill_loss_from_logits(h @ weight.t(), th @ t_weight.t(), labels, s, defer=defer)

    def deferred(s: TokenLossSettings, h: torch.Tensor = hidden) -> list[bool]:
        return loss(s, h, defer=True).nonfinite().tolist()

    unweighted = TokenLossSettings(weighting=None, ce_weight=0.5)
    bad_student, bad_teacher = hidden.detach().clone(), t_hidden.clone()
    bad_student[0, 3, 1] = float("nan")
    bad_teacher[1, 0, 0] = float("inf")
    nonfinite = r"contains 1 non-finite value\(s\) \(NaN or inf\)"
    with pytest.raises(ValueError, match=f"fkl loss from the student and teacher logits {nonfinite}"):
        loss(unweighted, h=bad_student)
    with pytest.raises(ValueError, match=f"fkl loss from the student and teacher logits {nonfinite}"):
        loss(unweighted, th=bad_teacher)
    custom = TokenLossSettings(weighting=nan_policy)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights of policy 'nan_policy' must be finite and >= 0"):
        loss(custom)
    assert deferred(custom) == [True, True, False]
    assert deferred(unweighted, bad_student) == [False, True, True]
    assert deferred(TokenLossSettings(ce_weight=0.5), bad_student) == [True, True, True]
    assert not loss(unweighted).nonfinite().any()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"tau": 0.0}, "tau must be > 0"),
        ({"tau": float("inf")}, "tau must be > 0"),
        ({"tau": -1.0, "weighting": None}, "tau must be > 0"),
        ({"tau": float("nan")}, "tau must be > 0"),
        ({"h_ub": 0.0}, "h_ub must be > 0"),
        ({"beta": 1.5}, r"beta must be in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\)"),
        ({"alpha": 1.0}, r"alpha must be in \[0, 1\): at 1"),
        ({"kd_weight": -1.0}, "kd_weight must be finite and >= 0"),
        ({"ce_weight": float("nan")}, "ce_weight must be finite and >= 0"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"weight_norm": "sum"}, "weight_norm must be one of"),
    ],
)
def test_settings_are_checked_when_built(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenLossSettings(**kw)


def _both_paths(s: TokenLossSettings, cached: bool, chunk_size: int = 5):
    """(the dense and the chunked loss outputs, each with its gradients w.r.t. hidden and weight) of one
    case, the teacher online (hidden states and lm_head) or as its top-k cache."""
    from eakd.llm.cache import TeacherTopK

    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=3)
    zt = (t_hidden @ t_weight.t()).detach()
    teacher = {"teacher_logits": zt}
    if cached:
        valid = token_mask(labels).reshape(-1)
        z = zt.reshape(-1, V)[valid]
        lp, ids = torch.log_softmax(z / s.temperature, -1).topk(6, -1)
        policy = s.policy()
        tau = policy.tau if policy is not None and policy.tau is not None else 1.0
        topk = TeacherTopK(ids, lp, eakd.entropy(z, tau), V, s.temperature, tau)
        teacher = {"teacher_logits": None, "teacher_topk": topk}
    outs = []
    for path in ("dense", "chunked"):
        if path == "dense":
            out = distill_loss_from_logits(hidden @ weight.t(), labels=labels, settings=s, **teacher)
        else:
            kw = (
                {"teacher_topk": topk} if cached else {"teacher_hidden": t_hidden, "teacher_weight": t_weight}
            )
            out = chunked_distill_loss(hidden, weight, labels, settings=s, chunk_size=chunk_size, **kw)
        outs.append((out, _grads(out.loss, hidden, weight)))
    return outs


@pytest.mark.parametrize("cached", [False, True], ids=["online", "cache"])
@pytest.mark.parametrize(
    "kw",
    [
        {"divergence": "fkl", "weighting": "ea", "ce_weight": 0.5},
        {"divergence": "jsd", "weighting": "ea", "temperature": 2.0, "weight_level": "sequence"},
        {"divergence": "rkl", "weighting": None},
        {"divergence": "fkl", "weighting": "uniform", "weight_norm": "mean"},
    ],
    ids=["fkl-ea-ce", "jsd-ea-T2-sequence", "rkl-none", "fkl-uniform-norm"],
)
def test_fused_setting_equals_eager_on_both_paths(kw: dict, cached: bool) -> None:
    """``fused=True`` (one compiled pass per chunk) gives the eager loss, gradients, weights and entropies
    on the dense and the chunked path, with the teacher online or from a top-k cache."""
    eager = _both_paths(TokenLossSettings(**kw), cached)
    fused = _both_paths(TokenLossSettings(**kw, fused=True), cached)
    for (e, e_grads), (f, f_grads) in zip(eager, fused, strict=True):
        for name in ("loss", "kd", "ce", "weights", "per_token", "h_t", "h_s"):
            a, b = getattr(e, name), getattr(f, name)
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
        for a, b in zip(e_grads, f_grads, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_fused_needs_a_built_in_weighting() -> None:
    with pytest.raises(ValueError, match="fused needs a built-in weighting"):
        TokenLossSettings(weighting=nan_policy, fused=True)
