"""Token divergences against plain references written here (values and gradients), masks, bf16."""

from __future__ import annotations

import math

import pytest
import torch

import eakd
from eakd.losses import get_loss
from eakd.losses.token import (
    DIVERGENCES,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    token_mask,
    total_variation,
)


def _probs(zs: torch.Tensor, zt: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.softmax(zs.double() / temperature, -1), torch.softmax(zt.double() / temperature, -1)


def _kl_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * (a.log() - b.log())).sum(-1)


def ref(name: str, zs: torch.Tensor, zt: torch.Tensor, temperature: float = 1.0, **kw: float) -> torch.Tensor:
    """Plain float64 references from probabilities, p = teacher, q = student."""
    q, p = _probs(zs, zt, temperature)
    if name == "fkl":
        return _kl_ref(p, q)
    if name == "rkl":
        return _kl_ref(q, p)
    if name == "jsd":
        beta = kw.get("beta", 0.5)
        m = beta * p + (1 - beta) * q
        return beta * _kl_ref(p, m) + (1 - beta) * _kl_ref(q, m)
    if name == "skl":
        a = kw.get("alpha", 0.1)
        return _kl_ref(p, a * p + (1 - a) * q)
    if name == "srkl":
        a = kw.get("alpha", 0.1)
        return _kl_ref(q, a * q + (1 - a) * p)
    assert name == "tvd"
    return 0.5 * (p - q).abs().sum(-1)


CASES = [
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.9}),
    ("skl", {"alpha": 0.1}),
    ("skl", {"alpha": 0.5}),
    ("srkl", {"alpha": 0.1}),
    ("srkl", {"alpha": 0.3}),
    ("tvd", {}),
]


def _logits(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize(("name", "kw"), CASES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_values_and_gradients_match_reference(name: str, kw: dict[str, float], temperature: float) -> None:
    zs = _logits(3, 5, 17, seed=1).requires_grad_()
    zt = _logits(3, 5, 17, seed=2)
    got = get_loss(name)(zs, zt, temperature=temperature, **kw)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    zs64 = zs.detach().double().requires_grad_()
    want = ref(name, zs64, zt.double(), temperature, **kw)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    upstream = torch.rand(3, 5, generator=torch.Generator().manual_seed(3))
    (g,) = torch.autograd.grad((got * upstream).sum(), zs)
    (g_ref,) = torch.autograd.grad((want * upstream.double()).sum(), zs64)
    torch.testing.assert_close(g.double(), g_ref, atol=1e-5, rtol=1e-4)


def test_jsd_endpoints_are_forward_and_reverse_kl() -> None:
    zs, zt = _logits(4, 9, 31, seed=4), _logits(4, 9, 31, seed=5)
    torch.testing.assert_close(generalized_jsd(zs, zt, beta=0.0), forward_kl(zs, zt))
    torch.testing.assert_close(generalized_jsd(zs, zt, beta=1.0), reverse_kl(zs, zt))
    torch.testing.assert_close(skew_kl(zs, zt, alpha=0.0), forward_kl(zs, zt))
    torch.testing.assert_close(skew_reverse_kl(zs, zt, alpha=0.0), reverse_kl(zs, zt))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\): at 1"):  # 0 whatever the teacher
        skew_kl(zs, zt, alpha=1.0)


def test_symmetric_jsd_is_bounded_by_ln2_and_tvd_by_1() -> None:
    zs, zt = _logits(64, 11, seed=6, scale=20.0), _logits(64, 11, seed=7, scale=20.0)
    assert generalized_jsd(zs, zt).max() <= math.log(2) + 1e-6
    tv = total_variation(zs, zt)
    assert tv.min() >= 0 and tv.max() <= 1 + 1e-6


@pytest.mark.parametrize("name", DIVERGENCES)
def test_identical_distributions_give_zero(name: str) -> None:
    z = _logits(2, 3, 13, seed=8)
    assert get_loss(name)(z, z.clone()).abs().max() < 1e-6


@pytest.mark.parametrize("name", DIVERGENCES)
def test_bf16_input_computes_in_float32(name: str) -> None:
    zs, zt = _logits(2, 4, 64, seed=9), _logits(2, 4, 64, seed=10)
    got = get_loss(name)(zs.bfloat16(), zt.bfloat16())
    assert got.dtype == torch.float32
    want = get_loss(name)(zs.bfloat16().float(), zt.bfloat16().float())
    torch.testing.assert_close(got, want)


def test_token_mask_and_masked_mean() -> None:
    labels = torch.tensor([[5, 2, -100, -100], [1, -100, 3, 4]])
    mask = token_mask(labels)
    assert mask.tolist() == [[True, True, False, False], [True, False, True, True]]
    assert token_mask(labels, ignore_index=5)[0, 0].item() is False
    zs, zt = _logits(2, 4, 7, seed=11), _logits(2, 4, 7, seed=12)
    per_token = forward_kl(zs, zt)
    got = eakd.weighted_mean(per_token, mask=mask)
    torch.testing.assert_close(got, per_token[mask].mean())


def test_distill_loss_ea_on_tokens_with_mask() -> None:
    zs = _logits(2, 6, 19, seed=13).requires_grad_()
    zt = _logits(2, 6, 19, seed=14)
    labels = torch.tensor([[1, 2, 3, -100, -100, -100], [4, 5, 6, 7, 8, -100]])
    mask = token_mask(labels)
    out = eakd.DistillLoss("fkl", weighting="ea", tau=2.0)(zs, zt, mask=mask)
    w = eakd.ea_weights(zs, zt, tau=2.0, mask=mask)
    want = (w * ref("fkl", zs.double(), zt.double()).float())[mask].sum() / mask.sum()
    torch.testing.assert_close(out["loss_kd"], want)
    out["loss_kd"].backward()
    assert zs.grad is not None and zs.grad[~mask].abs().max() == 0
    base = eakd.DistillLoss("jsd", weighting="none", beta=0.5)(zs, zt, mask=mask)["loss_kd"]
    torch.testing.assert_close(base, generalized_jsd(zs, zt)[mask].mean())


def test_bad_inputs_raise_clear_errors() -> None:
    zs, zt = _logits(2, 5, seed=15), _logits(2, 6, seed=16)
    with pytest.raises(ValueError, match="student has 5, teacher has 6"):
        forward_kl(zs, zt)
    z = _logits(2, 5, seed=15)
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(z, z, beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        skew_kl(z, z, alpha=-0.1)
    with pytest.raises(ValueError, match="non-finite"):
        reverse_kl(z, torch.full_like(z, float("nan")))


@pytest.mark.slow  # importing trl takes 5-20 s
def test_jsd_matches_trl_generalized_jsd_loss() -> None:
    gkd = pytest.importorskip("trl.experimental.gkd", reason="trl with the GKD trainer is not installed")
    trl_jsd = gkd.GKDTrainer.generalized_jsd_loss
    zs, zt = _logits(3, 7, 41, seed=17), _logits(3, 7, 41, seed=18)
    labels = torch.tensor([[1] * 7, [1, 1, -100, 1, 1, -100, -100], [-100] * 6 + [2]])
    mask = token_mask(labels)
    for beta in (0.0, 0.2, 0.5, 0.8, 1.0):
        for temperature in (1.0, 2.0):
            want = trl_jsd(zs, zt, labels=labels, beta=beta, temperature=temperature)
            got = eakd.weighted_mean(generalized_jsd(zs, zt, beta=beta, temperature=temperature), mask=mask)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
