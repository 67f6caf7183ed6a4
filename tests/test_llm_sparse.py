"""The sampled teacher cache (``eakd.llm.sparse``): its estimate of the loss is unbiased (the mean over many
independent caches converges to the full-teacher loss, value and gradient, where a top-k cache of the same
size does not), its draws are deterministic by seed, the divergences that cannot use it say so, and both
cache kinds load, validate, train and resume."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch

from eakd.llm import TeacherTopK, TokenLossSettings, chunked_distill_loss, distill_loss_from_logits
from eakd.llm.sparse import draw_uniforms, sparse_rows
from eakd.losses import get_loss
from eakd.losses.token import DIVERGENCES, token_mask
from eakd.weighting import entropy

B, T, H, V = 2, 6, 8, 29
K, EXACT = 6, 2  # slots per token, of which the top EXACT are kept exactly


def _case(seed: int = 0):
    """Student hidden/lm_head (grad), teacher logits (B, T, V), labels with ignored tokens."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.8).requires_grad_()
    zt = torch.randn(B, T, V, generator=g) * 1.5
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = -100
    return hidden, weight, zt, labels


def _cache(zt: torch.Tensor, labels: torch.Tensor, samples: int, generator: torch.Generator | None,
           temperature: float = 1.0, tau: float = 2.0) -> TeacherTopK:  # fmt: skip
    """The teacher of the valid rows as a cache of K slots: top-K (samples 0) or sampled (``samples``)."""
    z = zt.reshape(-1, V)[token_mask(labels).reshape(-1)]
    log_p = torch.log_softmax(z / temperature, -1)
    u = draw_uniforms([z.shape[0]], samples, generator) if samples else torch.empty(z.shape[0], 0)
    ids, lp, tail = sparse_rows(log_p, K, samples, u)
    return TeacherTopK(ids, lp, entropy(z, tau), V, temperature, tau, tail, samples=samples)


def _loss_and_grads(path: str, hidden, weight, labels, s, teacher_logits=None, topk=None):
    """(loss, grad hidden, grad weight) of one path against a teacher (logits or a cache)."""
    if path == "chunked":
        out = chunked_distill_loss(
            hidden, weight, labels, teacher_logits=teacher_logits, teacher_topk=topk, settings=s, chunk_size=4
        )
    else:
        out = distill_loss_from_logits(hidden @ weight.t(), teacher_logits, labels, s, teacher_topk=topk)
    grads = torch.autograd.grad(out.loss, (hidden, weight))
    return torch.cat([out.loss.detach()[None], grads[0].reshape(-1), grads[1].reshape(-1)])


@pytest.mark.parametrize(
    "divergence, weighting, path, exact",
    [("fkl", "ea", "chunked", EXACT), ("skl", None, "dense", 0)],
)
def test_the_mean_of_many_sampled_caches_is_the_full_teacher_loss(divergence, weighting, path, exact) -> None:
    """Averaged over N independent caches the loss and every gradient entry are within 5 standard errors
    (measured from the N draws) of the full teacher's (the largest of ~1000 such ratios is ~3.3 by
    chance); a top-k cache of the same K misses by more."""
    hidden, weight, zt, labels = _case(seed=1)
    s = TokenLossSettings(divergence=divergence, weighting=weighting, tau=2.0)
    want = _loss_and_grads(path, hidden, weight, labels, s, teacher_logits=zt)
    g = torch.Generator().manual_seed(0)
    n = 600
    draws = torch.stack(
        [
            _loss_and_grads(path, hidden, weight, labels, s, topk=_cache(zt, labels, K - exact, g))
            for _ in range(n)
        ]
    )
    se = draws.std(0) / math.sqrt(n)
    z = (draws.mean(0) - want).abs() / se.clamp_min(1e-12)
    assert float(z.max()) < 5.0, f"max |mean - full| / standard error {float(z.max()):.2f}"
    assert float(se[0]) < 0.01 * float(want[0].abs())  # the test resolves a 1 % bias of the loss
    topk = _loss_and_grads(path, hidden, weight, labels, s, topk=_cache(zt, labels, 0, None))
    assert float(((topk - want).abs() / se.clamp_min(1e-12)).max()) > 10  # the top-k cache is biased


@pytest.mark.parametrize("divergence", ["fkl", "skl"])
def test_teacher_expectation_is_the_divergence(divergence: str) -> None:
    """sum_v p_v g(log q_v, log p_v) equals the divergence on full distributions."""
    fn = get_loss(divergence)
    log_q, log_p = torch.log_softmax(torch.randn(5, V), -1), torch.log_softmax(torch.randn(5, V) * 2, -1)
    torch.testing.assert_close(
        (log_p.exp() * fn.teacher_expectation(log_q, log_p)).sum(-1), fn.on_log_probs(log_q, log_p)
    )


def test_divergences_without_an_expectation_refuse_a_sampled_cache() -> None:
    """Every built-in divergence either has a teacher expectation or refuses a sampled cache in one line."""
    hidden, weight, zt, labels = _case()
    topk = _cache(zt, labels, K - EXACT, torch.Generator().manual_seed(0))
    refused = []
    for name in DIVERGENCES:
        s = TokenLossSettings(divergence=name, weighting="ea", tau=2.0)
        if get_loss(name).teacher_expectation is not None:
            chunked_distill_loss(hidden, weight, labels, teacher_topk=topk, settings=s)
            continue
        refused.append(name)
        for call in (
            partial(chunked_distill_loss, hidden, weight, labels, teacher_topk=topk, settings=s),
            partial(distill_loss_from_logits, hidden @ weight.t(), None, labels, s, teacher_topk=topk),
        ):
            with pytest.raises(ValueError, match=f"divergence '{name}' cannot train from a sampled") as err:
                call()
            assert "\n" not in str(err.value)
    assert refused == ["rkl", "jsd", "srkl", "tvd"]


def test_sampled_chunked_equals_dense_and_fused_is_the_eager_estimate() -> None:
    hidden, weight, zt, labels = _case(seed=3)
    topk = _cache(zt, labels, K - EXACT, torch.Generator().manual_seed(0))
    s = TokenLossSettings(divergence="fkl", weighting="ea", tau=2.0, weight_level="sequence")
    want = _loss_and_grads("dense", hidden, weight, labels, s, topk=topk)
    for chunk in (1, 5, 64):
        out = chunked_distill_loss(hidden, weight, labels, teacher_topk=topk, settings=s, chunk_size=chunk)
        got = torch.cat(
            [
                out.loss.detach()[None],
                *(g.reshape(-1) for g in torch.autograd.grad(out.loss, (hidden, weight))),
            ]
        )
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    fused = TokenLossSettings(divergence="fkl", weighting="ea", tau=2.0, weight_level="sequence", fused=True)
    torch.testing.assert_close(_loss_and_grads("dense", hidden, weight, labels, fused, topk=topk), want)


def test_draws_follow_the_teacher_outside_the_exact_tokens() -> None:
    """Draws from a known distribution: never an exact token, frequencies within 5 standard errors."""
    log_p = torch.log_softmax(torch.randn(1, V) * 2, -1).expand(4000, V)
    ids, lp, tail = sparse_rows(log_p, 3, 2, draw_uniforms([4000], 2, torch.Generator().manual_seed(0)))
    exact = ids[0, :1]
    assert not (ids[:, 1:] == exact).any()
    torch.testing.assert_close(lp, log_p.gather(-1, ids))
    p = log_p[0].exp().scatter(0, exact, 0.0)
    p = p / p.sum()
    torch.testing.assert_close(tail, log_p.scatter(-1, ids[:, :1], -math.inf).logsumexp(-1))  # mass outside
    freq = torch.bincount(ids[:, 1:].reshape(-1), minlength=V).double() / 8000
    assert float(((freq - p) / (p * (1 - p) / 8000).sqrt().clamp_min(1e-9)).abs().max()) < 5


# -- the cache file, the trainer and resuming, on the tiny Llama of the pipeline tests ----------------------

transformers = pytest.importorskip("transformers")

from test_llm_pipeline import _config, teacher, tokenizer  # noqa: E402, F401
from tiny_llm import PAIRS  # noqa: E402

from eakd.llm.cache import TeacherCache, build_cache  # noqa: E402
from eakd.llm.data import collate, encode_pairs  # noqa: E402
from eakd.llm.models import make_student  # noqa: E402
from eakd.llm.trainer import EAKDTrainer  # noqa: E402


def test_a_fixed_seed_cache_is_deterministic(tokenizer, teacher) -> None:  # noqa: F811
    """The same seed gives the same draws whatever the batching; another seed others."""
    rows = encode_pairs(tokenizer, PAIRS[:6])
    build = partial(build_cache, teacher, rows, tokenizer.pad_token_id, top_k=5, samples=4)
    a, b, c = build(seed=7, batch_size=4), build(seed=7, batch_size=1), build(seed=8, batch_size=4)
    assert torch.equal(a.ids, b.ids)  # the teacher's padding changes its log-probs by float rounding only
    torch.testing.assert_close(a.logprobs, b.logprobs)
    assert not torch.equal(a.ids[:, 1:], c.ids[:, 1:]) and torch.equal(a.ids[:, :1], c.ids[:, :1])
    torch.testing.assert_close(a.coverage(), a.logprobs[:, 0].exp())  # mass kept exactly: the top 1


def test_both_kinds_save_load_and_are_validated(tokenizer, teacher, tmp_path: Path) -> None:  # noqa: F811
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    rows = encode_pairs(tokenizer, PAIRS[:4])
    for samples in (0, 3):
        cache = build_cache(
            teacher, rows, tokenizer.pad_token_id, top_k=3, samples=samples, seed=2
        )
        loaded = TeacherCache.load(cache.save(tmp_path / f"c{samples}.safetensors"))
        assert (loaded.samples, loaded.seed, loaded.top_k) == (samples, 2, 3)
        torch.testing.assert_close(loaded.ids, cache.ids)
        with safe_open(str(tmp_path / f"c{samples}.safetensors"), framework="pt") as f:
            meta = f.metadata()
        assert meta["kind"] == ("sampled" if samples else "topk")
    tensors = load_file(str(tmp_path / "c3.safetensors"))
    tail = tensors["tail_logmass"].clone()
    tail[0] = -math.inf
    cases = {
        "kind 'topk' does not match samples 3": ({}, {"kind": "topk"}),
        r"samples 4 is not in \[0, top_k 3\]": ({}, {"samples": "4"}),
        "tail_logmass holds 1 NaN, infinite": ({"tail_logmass": tail}, {}),
        "lacks 'kind'": ({}, {"kind": None}),
    }
    for message, (t_changes, m_changes) in cases.items():
        md = {k: v for k, v in {**meta, **m_changes}.items() if v is not None}
        save_file({**tensors, **t_changes}, str(tmp_path / "bad.safetensors"), metadata=md)
        with pytest.raises(ValueError, match=message):
            TeacherCache.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("samples", [0, 6])
def test_both_kinds_train_and_resume_to_the_uninterrupted_student(
    tokenizer,  # noqa: F811
    teacher,  # noqa: F811
    tmp_path: Path,
    samples: int,
) -> None:
    """4 steps straight, against 2 steps, a checkpoint, and a resumed trainer: the same student."""
    rows = encode_pairs(tokenizer, PAIRS)
    cache = build_cache(teacher, rows, tokenizer.pad_token_id, top_k=8, samples=samples)
    cache = TeacherCache.load(cache.save(tmp_path / "cache.safetensors"))

    def trainer(out: str, **kw: object) -> EAKDTrainer:
        args = _config(tmp_path / out, max_steps=4, save_strategy="steps", save_steps=2, seed=0, **kw)
        student = make_student(teacher, num_layers=2, init="layers")
        return EAKDTrainer(
            model=student, teacher=None, teacher_cache=cache, args=args, train_dataset=cache.attach(rows),
            data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
        )  # fmt: skip

    straight = trainer("straight")
    result = straight.train()
    logs = [h for h in straight.state.log_history if "loss" in h]
    assert math.isfinite(result.training_loss) and logs[-1]["loss"] < logs[0]["loss"]
    resumed = trainer("resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "out" / "checkpoint-2"))
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
