"""Entropies and weight policies against the authors' formulation, invariants and errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import eakd
from eakd.weighting import base_weights, interact_weights, inverse_weights, uniform_weights


def authors_entropy(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """The authors' code: softmax, then log(p + 1e-10)."""
    p = torch.softmax(logits.double() / tau, dim=-1)
    return -(p * torch.log(p + 1e-10)).sum(-1)


def authors_ea(zs: torch.Tensor, zt: torch.Tensor, tau: float, h_ub: float) -> torch.Tensor:
    h_t, h_s = authors_entropy(zt, tau), authors_entropy(zs, tau)
    return (h_t + h_t * h_s / h_ub) / 2


@pytest.mark.parametrize("h_ub", [None, 100.0])
@pytest.mark.parametrize("shape", [(16, 100), (3, 5, 50)])
def test_ea_matches_authors(h_ub, shape):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(shape, generator=g) * 3, torch.randn(shape, generator=g) * 3
    w = eakd.ea_weights(zs, zt, tau=3.0, h_ub=h_ub)
    bound = math.log(shape[-1]) if h_ub is None else h_ub
    assert w.shape == shape[:-1] and w.dtype == torch.float32
    torch.testing.assert_close(w.double(), authors_ea(zs, zt, 3.0, bound), atol=1e-5, rtol=0)


def test_entropy_values_and_dtype():
    z = torch.zeros(4, 10, dtype=torch.bfloat16)
    h = eakd.entropy(z)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, torch.full((4,), math.log(10)))
    one_hot = torch.tensor([[1000.0, 0.0, 0.0]])
    assert eakd.entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)


def test_invariants_uniform_and_one_hot():
    k = 37
    uniform = torch.zeros(5, k)
    w = eakd.ea_weights(uniform, uniform, tau=3.0)
    torch.testing.assert_close(w, torch.full((5,), math.log(k)))
    peaked = torch.zeros(5, k)
    peaked[:, 0] = 1e4
    assert eakd.ea_weights(uniform, peaked).abs().max() < 1e-5


def test_no_gradient_through_weights():
    zs = torch.randn(8, 10, requires_grad=True)
    zt = torch.randn(8, 10, requires_grad=True)
    for name in ["ea", "er", "base", "interact", "inverse", "uniform"]:
        w = eakd.get_policy(name)(zs, zt)
        assert not w.requires_grad, name


def test_bf16_logits_match_fp32():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(32, 100, generator=g), torch.randn(32, 100, generator=g)
    w16 = eakd.ea_weights(zs.bfloat16(), zt.bfloat16())
    w32 = eakd.ea_weights(zs.bfloat16().float(), zt.bfloat16().float())
    assert w16.dtype == torch.float32
    torch.testing.assert_close(w16, w32)


def test_halves_compose_into_ea():
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(10, 20, generator=g), torch.randn(10, 20, generator=g)
    ea = eakd.ea_weights(zs, zt, tau=3.0)
    halves = 0.5 * (base_weights(zs, zt, tau=3.0) + interact_weights(zs, zt, tau=3.0))
    torch.testing.assert_close(ea, halves)
    torch.testing.assert_close(inverse_weights(zs, zt) + ea, torch.full((10,), math.log(20)))


def test_er_is_teacher_entropy_at_tau_4():
    zt = torch.randn(6, 10)
    torch.testing.assert_close(eakd.er_weights(None, zt), eakd.entropy(zt, 4.0))


def test_mask_zeroes_weights():
    zs, zt = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    w = eakd.ea_weights(zs, zt, mask=mask)
    assert (w[~mask] == 0).all() and (w[mask] > 0).all()
    assert (uniform_weights(zs, zt, mask=mask) == mask.float()).all()


def test_standardized_entropy_option():
    zs, zt = torch.randn(4, 9), torch.randn(4, 9) * 5
    w = eakd.ea_weights(zs, zt, standardized=True)
    ref = eakd.ea_weights(eakd.standardize(zs), eakd.standardize(zt))
    torch.testing.assert_close(w, ref)


def test_callable_policy_and_register():
    def half(student_logits, teacher_logits, mask=None, scale=0.5):
        return torch.full(teacher_logits.shape[:-1], scale)

    zs = torch.randn(3, 4)
    assert eakd.get_policy(half, scale=2.0)(zs, zs).tolist() == [2.0, 2.0, 2.0]
    assert eakd.get_policy("none") is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: eakd.ea_weights(torch.randn(2, 5), torch.randn(2, 6)), "student has 5, teacher has 6"),
        (lambda: eakd.ea_weights(torch.randn(3, 5), torch.randn(2, 5)), "differ in shape"),
        (lambda: eakd.ea_weights(torch.full((2, 5), float("nan")), torch.randn(2, 5)), "non-finite"),
        (lambda: eakd.ea_weights(torch.randn(2, 5), torch.randn(2, 5).log().exp() * math.inf), "non-finite"),
        (lambda: eakd.ea_weights(torch.randn(2, 5), torch.randn(2, 5), tau=0.0), "tau must be > 0"),
        (lambda: eakd.ea_weights(torch.randn(2, 5), torch.randn(2, 5), h_ub=-1.0), "h_ub must be > 0"),
        (lambda: eakd.entropy(torch.randn(2, 5), tau=-2.0), "tau must be > 0"),
        (lambda: eakd.get_policy("entropy"), "known: base, ea, er"),
        (lambda: eakd.ea_weights(torch.randn(2, 5), torch.randn(2, 5), mask=torch.ones(5)), "mask shape"),
        (lambda: eakd.entropy(torch.randn(2, 5), tau=math.nan), "tau must be > 0 and finite"),
        (lambda: eakd.entropy(torch.randn(2, 5), tau=math.inf), "tau must be > 0 and finite"),
        (lambda: eakd.entropy(torch.randn(2, 0)), r"\(2, 0\) have 0 classes"),
        (lambda: eakd.ea_weights(torch.randn(2, 0), torch.randn(2, 0)), "0 classes"),
        (lambda: eakd.er_weights(None, torch.randn(3, 0)), "0 classes"),
        (lambda: eakd.get_policy("uniform", tau=2.0), r"'uniform' takes no setting\(s\) \['tau'\]"),
        (lambda: eakd.get_policy("er", h_ub=2.0), r"'er' takes no setting\(s\) \['h_ub'\]"),
        (lambda: eakd.get_policy("ea", h_ub=math.nan), "h_ub must be > 0 and finite"),
        (lambda: eakd.get_policy(lambda student_logits, teacher_logits, mask=None: None, x=1), "no setting"),
        (
            lambda: eakd.ea_weights(torch.randn(2, 5), torch.randn(2, 5, device="meta")),
            "student logits are on cpu but teacher logits on meta",
        ),
        (
            lambda: eakd.er_weights(None, torch.randn(2, 5), mask=torch.ones(2, device="meta")),
            "cpu but mask on meta",
        ),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_tau_must_be_a_number():
    with pytest.raises(TypeError, match="tau must be a number, got str"):
        eakd.get_policy("ea", tau="3")


def test_custom_policy_output_is_checked():
    """Type and shape here; finiteness where the loss reduces it (see test_core_losses)."""
    zs, zt = torch.randn(4, 6), torch.randn(4, 6)
    cases = [
        (lambda student_logits, teacher_logits, mask=None: torch.ones(4, 1), ValueError, r"shape \(4, 1\)"),
        (lambda student_logits, teacher_logits, mask=None: [1.0] * 4, TypeError, "returned list"),
    ]
    for fn, error, message in cases:
        with pytest.raises(error, match=message):
            eakd.get_policy(fn)(zs, zt)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 8),
    k=st.integers(2, 64),
    scale=st.floats(0.01, 50.0),
    tau=st.floats(0.5, 8.0),
    seed=st.integers(0, 2**16),
)
def test_weight_bounds_property(n, k, scale, tau, seed):
    g = torch.Generator().manual_seed(seed)
    zs, zt = torch.randn(n, k, generator=g) * scale, torch.randn(n, k, generator=g) * scale
    w = eakd.ea_weights(zs, zt, tau=tau)
    bound = math.log(k)
    assert (w >= 0).all() and (w <= bound + 1e-5).all()
    h = eakd.entropy(zt, tau)
    assert (h >= -1e-6).all() and (h <= bound + 1e-5).all()
