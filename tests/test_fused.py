"""The fused (compiled, single-pass) losses against the eager reference: values, gradients, entropies.

Compiling dominates the time (seconds per new graph), so the tests share a few setting combinations and
small shapes; the sweep over every token divergence and the bf16 / standardised variants are slow.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from eakd import DistillLoss
from eakd.losses import dkd_loss, get_loss, kd_loss
from eakd.losses.fused import fused_logit_terms, fused_token_terms
from eakd.weighting import entropy, get_policy

FP32 = {"rtol": 1e-5, "atol": 2e-5}
EXTREME = {"rtol": 5e-5, "atol": 1e-4}  # logits near 3000 (``extreme_logits``)


def logits(n: int = 6, k: int = 10, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(n, k, generator=g) * 3).to(dtype).requires_grad_()
    zt = (torch.randn(n, k, generator=g) * 3).to(dtype)
    return zs, zt, torch.randint(0, k, (n,), generator=g)


def grad(values: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(0.5, 1.5, values.numel()).reshape(values.shape)  # a non-uniform upstream gradient
    return torch.autograd.grad((values * w).sum(), zs)[0]


def check_against_eager(method: str, tau: float, dtype: torch.dtype = torch.float32, **tol: float) -> None:
    zs, zt, y = logits(dtype=dtype)
    loss, h_s, h_t = fused_logit_terms(method, zs, zt, y, tau=tau, temperature=4.0)
    eager = kd_loss(zs, zt, 4.0) if method == "kd" else dkd_loss(zs, zt, y, temperature=4.0)
    policy = get_policy("ea", tau=tau)
    assert policy is not None
    ref_s, ref_t = policy.entropies(zs, zt)
    tol = tol or FP32
    assert loss.dtype == torch.float32 and loss.shape == (6,)
    torch.testing.assert_close(loss, eager, **tol)
    torch.testing.assert_close(h_s, ref_s, **tol)
    torch.testing.assert_close(h_t, ref_t, **tol)
    torch.testing.assert_close(grad(loss, zs), grad(eager, zs), **tol)


@pytest.mark.parametrize("method", ["kd", "dkd"])
# tau / T = 5/8: a second exp on the loss's shift; 3/4: one exp for both (shared_powers); tau == T
@pytest.mark.parametrize("tau", [2.5, 3.0, 4.0])
def test_logit_terms_match_eager(method: str, tau: float) -> None:
    check_against_eager(method, tau)


@pytest.mark.slow
def test_bf16_inputs() -> None:
    check_against_eager("kd", 3.0, torch.bfloat16, rtol=1.6e-2, atol=1e-3)
    check_against_eager("dkd", 3.0, torch.bfloat16, rtol=1.6e-2, atol=1e-3)
    token_case("fkl", {}, torch.bfloat16)
    token_case("rkl", {}, torch.bfloat16)


def extreme_logits(dtype: torch.dtype) -> tuple[Any, ...]:
    """Rows that break a careless shift: ordinary; magnitudes near 1e3; the target 2000 above every other
    class (the non-target softmax underflows if shifted by the row max); the target 2000 below; a flat
    student row; offsets of +-3000."""
    zs, zt, y = logits()
    zs, zt = zs.detach().clone(), zt.clone()
    zs[1], zt[1] = zs[1] * 300, zt[1] * 300
    zs[2, y[2]], zt[2, y[2]] = zs[2].max() + 2000, zt[2].max() + 1500
    zs[3, y[3]], zt[3, y[3]] = zs[3].min() - 2000, zt[3].min() - 1000
    zs[4] = 5.0
    zs[5], zt[5] = zs[5] + 3000, zt[5] - 3000
    return zs.to(dtype).requires_grad_(), zt.to(dtype), y


# tau / T = 5/8: no shared exp; 3/4 and 2/1: one exp for both (shared_powers); 1: tau == T
@pytest.mark.parametrize("tau", [2.5, 3.0, 4.0, 8.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dkd_at_any_tau_matches_reference_on_extreme_logits(tau: float, dtype: torch.dtype) -> None:
    """Fused DKD and its entropies at tau, one pass, against ``dkd_loss`` and ``entropy``: values and the
    student's gradients (bf16 inputs: the same float32 math). Tolerance: float32 logits near 3000 divided
    by tau carry rounding errors near 1e-4, in the reference as in the fused pass."""
    zs, zt, y = extreme_logits(dtype)
    loss, h_s, h_t = fused_logit_terms("dkd", zs, zt, y, tau=tau, temperature=4.0)
    ref = dkd_loss(zs, zt, y, temperature=4.0)
    torch.testing.assert_close(loss, ref, **EXTREME)
    torch.testing.assert_close(h_s, entropy(zs, tau), **EXTREME)
    torch.testing.assert_close(h_t, entropy(zt, tau), **EXTREME)
    want = grad(ref, zs)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(grad(loss, zs), want, **EXTREME)


@pytest.mark.parametrize("tau", [2.5, 3.0])
def test_dkd_entropies_come_from_the_loss_pass(tau: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """DKD at tau != T makes no entropy pass of its own (``_entropy_at``) on the loss's logits: the
    kernel, run uncompiled, gives the reference with that pass removed; it is there only for entropies of
    differently standardised logits."""
    from eakd.losses import fused

    def no_own_pass(*args: Any) -> None:
        raise AssertionError("an entropy pass of its own")

    monkeypatch.setattr(fused, "_entropy_at", no_own_pass)
    zs, zt, y = extreme_logits(torch.float32)
    powers = fused.shared_powers(4.0, tau)
    loss, h_s, h_t = fused._dkd_kernel(zs, zt, y, 4.0, 1.0, 8.0, tau, powers, False, False, True)
    ref = dkd_loss(zs, zt, y, temperature=4.0)
    torch.testing.assert_close(loss, ref, **EXTREME)
    torch.testing.assert_close(grad(loss, zs), grad(ref, zs), **EXTREME)  # eager autograd: no 0 * inf
    torch.testing.assert_close(h_s, entropy(zs, tau), **EXTREME)
    torch.testing.assert_close(h_t, entropy(zt, tau), **EXTREME)
    with pytest.raises(AssertionError, match="of its own"):
        fused._dkd_kernel(zs, zt, y, 4.0, 1.0, 8.0, tau, None, False, True, True)


def token_case(
    divergence: str, settings: dict[str, float], dtype: torch.dtype = torch.float32, tau: float = 2.0
) -> None:
    zs, zt, _ = logits(dtype=dtype)
    loss, h_s, h_t = fused_token_terms(divergence, zs, zt, temperature=1.0, tau=tau, **settings)
    eager = get_loss(divergence)(zs, zt, temperature=1.0, **settings)
    policy = get_policy("ea", tau=tau)
    assert policy is not None
    ref_s, ref_t = policy.entropies(zs, zt)
    tol = FP32 if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-3}
    torch.testing.assert_close(loss, eager, **tol)
    torch.testing.assert_close(h_s, ref_s, **tol)
    torch.testing.assert_close(h_t, ref_t, **tol)
    torch.testing.assert_close(grad(loss, zs), grad(eager, zs), **tol)


@pytest.mark.parametrize(("divergence", "settings"), [("fkl", {}), ("rkl", {})])
@pytest.mark.parametrize("tau", [2.0, 2.5])  # tau / T = 2: one exp for both; 5/2: a second exp
def test_token_terms_match_eager(divergence: str, settings: dict[str, float], tau: float) -> None:
    token_case(divergence, settings, tau=tau)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("divergence", "settings"), [("jsd", {"beta": 0.3}), ("skl", {"alpha": 0.1}), ("srkl", {}), ("tvd", {})]
)
def test_every_token_divergence_matches_eager(divergence: str, settings: dict[str, float]) -> None:
    token_case(divergence, settings)


def test_token_terms_leading_dims_and_given_teacher_entropy() -> None:
    """(B, T, V) logits; a given h_t is returned as is and the loss and h_s are unchanged."""
    zs, zt, _ = logits(n=6)
    zs3, zt3 = zs.detach().reshape(2, 3, 10).requires_grad_(), zt.reshape(2, 3, 10)
    given = torch.full((2, 3), 0.25)
    loss, h_s, h_t = fused_token_terms("fkl", zs3, zt3, temperature=1.0, tau=2.0, h_t=given)
    ref_loss, ref_s, _ = fused_token_terms("fkl", zs, zt, temperature=1.0, tau=2.0)
    assert loss.shape == h_s.shape == (2, 3) and h_t is not None
    assert torch.equal(h_t, given)
    torch.testing.assert_close(loss.reshape(6), ref_loss, **FP32)
    torch.testing.assert_close(h_s.reshape(6), ref_s, **FP32)


def test_token_terms_from_teacher_log_probs() -> None:
    """The cache's route: teacher log-probabilities at T instead of logits, with the cache's h_t."""
    zs, zt, _ = logits()
    log_p = torch.log_softmax(zt, dim=-1)
    h_t = torch.rand(6)
    loss, _, got_t = fused_token_terms("fkl", zs, None, temperature=1.0, tau=2.0, h_t=h_t,
                                         teacher_log_probs=log_p)  # fmt: skip
    torch.testing.assert_close(loss, get_loss("fkl")(zs, zt), **FP32)
    assert got_t is not None and torch.equal(got_t, h_t)
    with pytest.raises(ValueError, match="needs the teacher entropies"):
        fused_token_terms("fkl", zs, None, temperature=1.0, tau=2.0, teacher_log_probs=log_p)
    with pytest.raises(ValueError, match="teacher's logits zt or its teacher_log_probs"):
        fused_token_terms("fkl", zs, None, temperature=1.0, tau=2.0)


POLICIES = ["ea", "er", "base", "interact", "inverse", "uniform", "none"]


def both(weighting: str, **kw: Any) -> tuple[DistillLoss, DistillLoss]:
    return tuple(  # type: ignore[return-value]
        DistillLoss("kd", weighting, temperature=4.0, ce_weight=0.5, fused=f, **kw) for f in (False, True)
    )


def compare_calls(
    eager: DistillLoss, fused: DistillLoss, mask: torch.Tensor | None = None, n: int = 6
) -> None:
    """Same terms, gradients and ``last`` diagnostics from the eager and the fused DistillLoss."""
    zs, zt, y = logits(n=n)
    outs, grads = [], []
    for loss in (eager, fused):
        terms = loss(zs, zt, y, mask=mask)
        grads.append(torch.autograd.grad(sum(terms.values()), zs)[0])
        outs.append(terms)
    assert outs[0].keys() == outs[1].keys()
    for name in outs[0]:
        torch.testing.assert_close(outs[1][name], outs[0][name], **FP32)
    torch.testing.assert_close(grads[1], grads[0], **FP32)
    assert eager.last.keys() == fused.last.keys()
    for name, value in eager.last.items():
        other = fused.last[name]
        assert (value is None) == (other is None), name
        if value is not None:
            torch.testing.assert_close(other, value, **FP32)


@pytest.mark.parametrize("weighting", POLICIES)
def test_every_policy_fused_equals_eager(weighting: str) -> None:
    compare_calls(*both(weighting))


def test_masks_and_weight_norm() -> None:
    mask = torch.tensor([True, False, True, True, False, True])
    compare_calls(*both("ea", weight_norm="mean"), mask=mask)
    compare_calls(*both("ea"), mask=torch.zeros(6, dtype=torch.bool))


def test_two_batch_sizes_and_dkd() -> None:
    eager, fused = (DistillLoss("dkd", "ea", temperature=4.0, fused=f) for f in (False, True))
    compare_calls(eager, fused, n=6)
    compare_calls(eager, fused, n=9)


@pytest.mark.slow
def test_standardized_entropies_and_logits() -> None:
    compare_calls(*both("ea", entropy_on="standardized"))
    compare_calls(*both("ea", standardize_logits=True))
    compare_calls(*both("ea", tau=4.0, entropy_on="standardized", standardize_logits=True))


def test_nonfinite_flags_match_eager() -> None:
    zs, zt, y = logits()
    bad = zs.detach().clone()
    bad[2, 3] = float("nan")
    for sync in (True, False):
        losses = [DistillLoss("kd", "ea", temperature=4.0, sync_checks=sync, fused=f) for f in (False, True)]
        if sync:
            for loss in losses:
                with pytest.raises(ValueError, match="non-finite"):
                    loss(bad, zt, y)
            continue
        for loss in losses:  # deferred: the terms and weights themselves say it, for the runner's guard
            assert torch.isfinite(loss(zs, zt, y)["loss_kd"])
            assert not torch.isfinite(loss(bad, zt, y)["loss_kd"])
            assert not torch.isfinite(loss.last["weights"]).all()


def test_refusals() -> None:
    with pytest.raises(ValueError, match="fused=True supports method 'kd' or 'dkd', got 'mlkd'"):
        DistillLoss("mlkd", "ea", fused=True)
    with pytest.raises(ValueError, match="custom policy"):
        DistillLoss("kd", lambda zs, zt, mask=None: torch.ones(zs.shape[0]), fused=True)
    with pytest.raises(ValueError, match="float temperature"):
        DistillLoss("kd", "ea", fused=True, temperature=torch.tensor(4.0))
    zs, zt, y = logits()
    with pytest.raises(ValueError, match="fused losses exist for methods"):
        fused_logit_terms("fitnet", zs, zt, y, tau=3.0)
    with pytest.raises(ValueError, match="takes no setting"):
        fused_logit_terms("kd", zs, zt, y, tau=3.0, alpha=1.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        fused_logit_terms("kd", zs, zt, y, tau=0.0)
    with pytest.raises(ValueError, match="needs \\['target'\\]"):
        fused_logit_terms("dkd", zs, zt, None, tau=3.0)
    with pytest.raises(ValueError, match=r"unknown distillation loss .kl. \(did you mean .skl.\?\)"):
        fused_token_terms("kl", zs, zt, temperature=1.0, tau=None)
    with pytest.raises(ValueError, match="beta must be in"):
        fused_token_terms("jsd", zs, zt, temperature=1.0, tau=None, beta=2.0)
    with pytest.raises(ValueError, match="differ in their last"):
        fused_token_terms("fkl", zs, zt[:, :5], temperature=1.0, tau=None)


def test_from_config_passes_fused() -> None:
    from eakd.engine.config import DistillConfig

    cfg = DistillConfig(method="kd", weighting="ea", fused=True, hparams={"temperature": 4.0})
    loss = DistillLoss.from_config(cfg)
    assert loss is not None and loss.fused


def test_auto_takes_the_compiled_pass_past_the_crossover_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """fused="auto" (the default everywhere): eager below AUTO_MIN_NUMEL logits, the compiled pass from
    there when the settings are fusable and torch.compile works; True / False force a path."""
    from eakd.llm.settings import TokenLossSettings
    from eakd.losses import fused_rule as fused

    big, small = fused.AUTO_MIN_NUMEL, fused.AUTO_MIN_NUMEL - 1
    monkeypatch.setattr(fused, "compile_works", lambda: True)
    assert fused.use_fused("auto", True, big) and not fused.use_fused("auto", True, small)
    assert not fused.use_fused("auto", False, big)  # settings without a compiled pass: eager
    assert fused.use_fused(True, True, 1) and not fused.use_fused(False, True, big)
    monkeypatch.setattr(fused, "compile_works", lambda: False)
    assert not fused.use_fused("auto", True, big)  # no working compiler: eager
    assert DistillLoss().fused == "auto" and TokenLossSettings().fused == "auto"
    assert not DistillLoss("kd", lambda zs, zt, mask=None: torch.ones(zt.shape[:-1])).fusable
    assert TokenLossSettings(weighting=lambda zs, zt, mask=None: zt[..., 0]).compiled(big) is False  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fused must be true, false or 'auto'"):
        DistillLoss(fused="yes")  # type: ignore[arg-type]


def test_distill_loss_auto_calls_the_path_the_rule_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DistillLoss with the default fused="auto" runs the compiled pass on logits past the crossover and
    the eager loss below it (the path recorded, not timed)."""
    from eakd import distill
    from eakd.losses import fused_rule as fused

    monkeypatch.setattr(fused, "AUTO_MIN_NUMEL", 60)
    monkeypatch.setattr(fused, "compile_works", lambda: True)
    taken = []
    real = distill.fused_weighted
    monkeypatch.setattr(distill, "fused_weighted", lambda *a: taken.append("fused") or real(*a))
    loss = DistillLoss("kd", "ea", temperature=4.0)
    for n in (5, 6):  # 5 x 10 = 50 logits: eager; 6 x 10 = 60: compiled
        zs, zt, _ = logits(n=n)
        loss(zs, zt)
        taken.append(f"call {n}")
    assert taken == ["call 5", "fused", "call 6"]
