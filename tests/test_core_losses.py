"""KD, DKD, weighted_mean and DistillLoss against plain references (values and gradients); their errors."""

import math

import pytest
import torch
import torch.nn.functional as F

import eakd
from eakd.distill import DistillLoss
from eakd.engine.config import DistillConfig
from eakd.losses import LOSSES, dkd_loss, kd_loss, linear_warmup, weighted_mean


def ref_kd_mean(zs, zt, t):
    """Hinton KD as the anchors write it: batchmean KL, times T^2."""
    return F.kl_div(F.log_softmax(zs / t, 1), F.softmax(zt / t, 1), reduction="batchmean") * t * t


def ref_dkd_mean(zs, zt, target, alpha, beta, t):
    """Published DKD: binary target/other KL plus non-target KL via a -1000 logit shift, batch mean."""
    gt = F.one_hot(target, zs.shape[1]).float()
    ps, pt = F.softmax(zs / t, 1), F.softmax(zt / t, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * t**2 / zs.shape[0]
    nt = F.softmax(zt / t - 1000.0 * gt, 1)
    ns = F.log_softmax(zs / t - 1000.0 * gt, 1)
    nckd = F.kl_div(ns, nt, reduction="sum") * t**2 / zs.shape[0]
    return alpha * tckd + beta * nckd


def logits(n=12, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(n, k, generator=g) * 2).requires_grad_()
    zt = torch.randn(n, k, generator=g) * 3
    target = torch.randint(0, k, (n,), generator=g)
    return zs, zt, target


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_kd_value_and_grad(t):
    zs, zt, _ = logits()
    per = kd_loss(zs, zt, t)
    assert per.shape == (12,)
    ref = ref_kd_mean(zs, zt, t)
    torch.testing.assert_close(per.mean(), ref)
    g1 = torch.autograd.grad(per.mean(), zs)[0]
    g2 = torch.autograd.grad(ref, zs)[0]
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize(("alpha", "beta", "t"), [(1.0, 8.0, 4.0), (0.5, 0.5, 1.0)])
def test_dkd_matches_published(alpha, beta, t):
    zs, zt, target = logits(k=100)
    per = dkd_loss(zs, zt, target, alpha=alpha, beta=beta, temperature=t)
    assert per.shape == (12,)
    ref = ref_dkd_mean(zs, zt, target, alpha, beta, t)
    torch.testing.assert_close(per.mean(), ref, rtol=1e-4, atol=1e-5)
    g1 = torch.autograd.grad(per.mean(), zs)[0]
    g2 = torch.autograd.grad(ref, zs)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-6)
    assert torch.isfinite(g1).all()


def test_distill_loss_none_is_published_baseline():
    zs, zt, target = logits(k=100)
    out = eakd.DistillLoss("dkd", weighting="none", alpha=1.0, beta=8.0, temperature=4.0)(zs, zt, target)
    torch.testing.assert_close(out["loss_kd"], ref_dkd_mean(zs, zt, target, 1.0, 8.0, 4.0), rtol=1e-4, atol=0)
    out = eakd.DistillLoss("kd", weighting="none", temperature=4.0)(zs, zt)
    torch.testing.assert_close(out["loss_kd"], ref_kd_mean(zs, zt, 4.0))


def test_distill_loss_ea_weights_and_ce():
    zs, zt, target = logits(k=100)
    fn = eakd.DistillLoss("kd", weighting="ea", tau=3.0, temperature=4.0, kd_weight=0.9, ce_weight=0.1)
    out = fn(zs, zt, target)
    w = eakd.ea_weights(zs, zt, tau=3.0)
    torch.testing.assert_close(out["loss_kd"], 0.9 * (w * kd_loss(zs, zt, 4.0)).mean())
    torch.testing.assert_close(out["loss_ce"], 0.1 * F.cross_entropy(zs, target))
    torch.testing.assert_close(fn.last["weights"], w)
    # the weight carries no gradient: d loss / d zs equals the weighted KD gradient with w as a constant
    g = torch.autograd.grad(out["loss_kd"], zs)[0]
    g_ref = torch.autograd.grad(0.9 * (w.detach() * kd_loss(zs, zt, 4.0)).mean(), zs)[0]
    torch.testing.assert_close(g, g_ref)


def test_distill_loss_weight_norm_mean():
    """weight_norm="mean": the loss (and its gradient) of w / mean(w) over the valid samples, whose mean is
    1; masked samples are left out of the mean; the config's field reaches the loss; bad names fail."""
    zs, zt, _ = logits(k=100)
    mask = torch.ones(zs.shape[0], dtype=torch.bool)
    mask[::3] = False
    fn = eakd.DistillLoss("kd", weighting="ea", tau=2.0, temperature=4.0, weight_norm="mean")
    out = fn(zs, zt, mask=mask)
    w = eakd.ea_weights(zs, zt, tau=2.0, mask=mask)
    w_ref = w / w[mask].mean()
    ref = eakd.weighted_mean(kd_loss(zs, zt, 4.0), w_ref, mask)
    torch.testing.assert_close(out["loss_kd"], ref)
    torch.testing.assert_close(fn.last["weights"][mask].mean(), torch.tensor(1.0))
    g, g_ref = (torch.autograd.grad(x, zs)[0] for x in (out["loss_kd"], ref))
    torch.testing.assert_close(g, g_ref)
    cfg = DistillConfig(weighting="ea", weight_norm="mean", hparams={"temperature": 4.0})
    assert DistillLoss.from_config(cfg).weight_norm == "mean"
    with pytest.raises(ValueError, match="weight_norm must be one of"):
        eakd.DistillLoss("kd", weight_norm="sum")


def test_distill_loss_standardized_logits_and_warmup():
    zs, zt, _ = logits()
    fn = eakd.DistillLoss("kd", weighting="er", standardize_logits=True, temperature=2.0, warmup_epochs=10)
    out = fn(zs, zt, epoch=5)
    w = eakd.er_weights(None, zt)  # entropy on raw logits by default
    ref = 0.5 * (w * kd_loss(eakd.standardize(zs), eakd.standardize(zt), 2.0)).mean()
    torch.testing.assert_close(out["loss_kd"], ref)
    assert linear_warmup(0, 20) == 0.0 and linear_warmup(40, 20) == 1.0 and linear_warmup(3, 0) == 1.0


def test_weighted_mean_mask_and_denominator():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    w = torch.tensor([[1.0, 0.5, 2.0], [1.0, 1.0, 1.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert weighted_mean(v, w, m).item() == pytest.approx((1 + 1 + 4) / 3)
    assert weighted_mean(v, mask=m, denominator=6).item() == pytest.approx(7 / 6)
    assert weighted_mean(v).item() == pytest.approx(3.5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: weighted_mean(torch.ones(4), torch.ones(4, 3)), r"weights shape \(4, 3\) does not match"),
        (lambda: weighted_mean(torch.ones(4), torch.ones(4, 1)), "no broadcasting"),
        (lambda: weighted_mean(torch.ones(2, 3), mask=torch.ones(3)), "mask shape"),
        (
            lambda: eakd.DistillLoss("kdd"),
            r"unknown distillation loss 'kdd' \(did you mean 'kd'\?\); known: .*dkd.*kd",
        ),
        (lambda: eakd.DistillLoss("kd", weighting="ee"), "unknown weight policy 'ee'"),
        (lambda: eakd.DistillLoss("kd", alpha=1.0), r"takes no setting\(s\) \['alpha'\]"),
        (lambda: eakd.DistillLoss("dkd")(torch.randn(2, 5), torch.randn(2, 5)), r"needs \['target'\]"),
        (lambda: kd_loss(torch.randn(2, 5), torch.randn(2, 5), 0.0), "temperature must be > 0"),
        (lambda: kd_loss(torch.randn(2, 5), torch.randn(2, 7)), "student has 5, teacher has 7"),
        (lambda: dkd_loss(torch.randn(2, 5), torch.randn(2, 5), torch.zeros(3).long()), "target shape"),
        (lambda: eakd.DistillLoss("kd", entropy_on="soft"), "entropy_on"),
        # settings are refused when the loss is built, not at its first step
        (lambda: eakd.DistillLoss("kd", "uniform", tau=2.0), r"'uniform' takes no setting\(s\) \['tau'\]"),
        (lambda: eakd.DistillLoss("kd", "ea", h_ub=math.inf), "h_ub must be > 0 and finite"),
        (lambda: eakd.DistillLoss("kd", temperature=0.0), "'temperature' must be > 0"),
        (lambda: eakd.DistillLoss("mlkd", extra_temperatures=(2.0, math.nan)), "'extra_temperatures'"),
        (lambda: eakd.DistillLoss("kd", target=1), r"takes no setting\(s\) \['target'\]"),
        (lambda: eakd.DistillLoss("fitnet", "ea", hint=2), r"takes no setting\(s\) \['hint'\]"),
        (lambda: eakd.DistillLoss("fitnet", "ea"), r"needs the setting\(s\) \['student_channels'"),
        (lambda: eakd.DistillLoss("kd", ce_weight=math.nan), "ce_weight must be finite and >= 0"),
        (lambda: eakd.DistillLoss("kd", kd_weight=-1.0), "kd_weight must be finite and >= 0"),
        # denominators <= 0, as a number or a tensor
        (lambda: weighted_mean(torch.ones(3), denominator=0), "denominator must be > 0"),
        (lambda: weighted_mean(torch.ones(3), denominator=-2.0), "denominator must be > 0"),
        (lambda: weighted_mean(torch.ones(3), denominator=math.nan), "denominator must be > 0"),
        (lambda: weighted_mean(torch.ones(3), denominator=torch.tensor(0)), "denominator must be > 0"),
        (lambda: weighted_mean(torch.ones(3), denominator=torch.tensor([-1.0])), "denominator must be > 0"),
        (lambda: weighted_mean(torch.ones(3), denominator=torch.ones(2)), "one value"),
        # zero classes
        (lambda: kd_loss(torch.randn(2, 0), torch.randn(2, 0)), r"\(2, 0\) have 0 classes"),
        (lambda: dkd_loss(torch.randn(2, 0), torch.randn(2, 0), torch.zeros(2).long()), "0 classes"),
        (lambda: eakd.DistillLoss("kd")(torch.randn(3, 0), torch.randn(3, 0)), "0 classes"),
        (lambda: eakd.DistillLoss("mlkd")(torch.randn(3, 0), torch.randn(3, 0)), "0 classes"),
        (
            lambda: eakd.DistillLoss("ctkd")(torch.randn(3, 0), torch.randn(3, 0), torch.zeros(3).long()),
            "0 classes",
        ),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bf16_logits_losses():
    zs, zt, target = logits(k=50)
    out = eakd.DistillLoss("dkd", weighting="ea")(zs.bfloat16(), zt.bfloat16(), target)
    ref = eakd.DistillLoss("dkd", weighting="ea")(zs.bfloat16().float(), zt.bfloat16().float(), target)
    assert out["loss_kd"].dtype == torch.float32
    torch.testing.assert_close(out["loss_kd"], ref["loss_kd"])


def test_distill_loss_advances_ctkd_curriculum():
    zs, zt, target = logits()
    fn = eakd.DistillLoss("ctkd", weighting="ea", max_lambda=1.0, lambda_start=0.0, lambda_end=10.0)
    fn(zs, zt, target, epoch=0.0)
    assert fn.module.lam == pytest.approx(0.0)
    fn(zs, zt, target, epoch=10.0)
    assert fn.module.lam == pytest.approx(1.0)
    assert any(p.requires_grad for p in fn.parameters())  # the temperature trains with the student


def test_weighted_mean_tensor_denominator_and_empty_mask():
    v = torch.tensor([1.0, 2.0, 3.0])
    assert weighted_mean(v, denominator=torch.tensor(4)).item() == pytest.approx(1.5)
    assert weighted_mean(v, mask=torch.zeros(3, dtype=torch.bool)).item() == 0.0  # nothing valid: 0
    # defer: no host read, a bad count turns the result NaN for the caller's device check
    assert math.isnan(weighted_mean(v, denominator=torch.tensor(0), defer=True).item())


def test_bad_tensor_temperature_deferred_gives_nan_not_error():
    """With defer=True a learned temperature <= 0 or NaN is not read back: its rows become NaN, which the
    caller's device-side finiteness flag reports; without, it is a ValueError."""
    t = torch.tensor([1.0, 2.0, 0.0, math.nan, 1.0])
    out = kd_loss(torch.randn(5, 4), torch.randn(5, 4), t, defer=True)
    assert torch.isfinite(out).tolist() == [True, True, False, False, True]
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd_loss(torch.randn(5, 4), torch.randn(5, 4), t)


@pytest.mark.parametrize(
    ("call", "devices"),
    [
        (lambda z, m: kd_loss(z, m), "cpu.*meta"),
        (lambda z, m: dkd_loss(z, z, torch.zeros(4, dtype=torch.long, device="meta")), "cpu.*meta"),
        (lambda z, m: weighted_mean(z[:, 0], torch.ones(4, device="meta")), "cpu.*meta"),
        (
            lambda z, m: weighted_mean(z[:, 0], mask=torch.ones(4, dtype=torch.bool, device="meta")),
            "cpu.*meta",
        ),
        (lambda z, m: eakd.DistillLoss("kd", "ea")(z, m), "cpu.*meta"),
        (lambda z, m: eakd.DistillLoss("kd", "ea")(m, z), "meta.*cpu"),
        (lambda z, m: eakd.DistillLoss("kd", "er")(z, z, mask=torch.ones(4, device="meta")), "cpu.*meta"),
        (lambda z, m: eakd.DistillLoss("kd", None)(z, z, mask=torch.ones(4, device="meta")), "cpu.*meta"),
    ],
)
def test_mixed_devices_name_both(call, devices):
    z, on_meta = torch.randn(4, 5), torch.randn(4, 5, device="meta")
    with pytest.raises(ValueError, match=f"{devices}.*one device"):
        call(z, on_meta)


def _nan_policy(student_logits, teacher_logits, mask=None):
    return torch.full(teacher_logits.shape[:-1], float("nan"))


def _plain_l2(student_logits, teacher_logits):  # a user's loss without its own finiteness check
    return (student_logits - teacher_logits).pow(2).mean(dim=-1)


def test_distill_loss_refuses_nonfinite(monkeypatch):
    monkeypatch.setitem(LOSSES._items, "plain_l2", _plain_l2)
    zs, zt, _ = logits()
    bad = zs.detach().clone()
    bad[3, 2] = float("nan")
    for weighting in (None, "ea", "uniform"):
        with pytest.raises(ValueError, match="non-finite"):
            eakd.DistillLoss("kd", weighting)(bad, zt)
    with pytest.raises(ValueError, match="plain_l2 loss: loss_kd non-finite"):
        eakd.DistillLoss("plain_l2", None)(bad, zt)
    with pytest.raises(ValueError, match=r"weights of policy '_nan_policy' must be finite and >= 0"):
        eakd.DistillLoss("kd", _nan_policy)(zs, zt)
    masked = eakd.DistillLoss("plain_l2", None)(bad, zt, mask=torch.arange(12) != 3)  # NaN row masked out
    assert torch.isfinite(masked["loss_kd"])


def _no_host_reads(monkeypatch):
    """Make every read of a tensor value back to the host an error (what a device sync would be)."""

    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor value")

    for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize(
    ("method", "weighting", "kw"),
    [("kd", "ea", {"ce_weight": 0.5}), ("dkd", None, {}), ("mlkd", "er", {}), ("ctkd", _nan_policy, {})],
)
def test_deferred_checks_record_flags_without_host_reads(monkeypatch, method, weighting, kw):
    zs, zt, target = logits()
    bad = zs.detach().clone()
    bad[0, 0] = float("inf")
    fn = eakd.DistillLoss(method, weighting, sync_checks=False, **kw)
    with monkeypatch.context() as m:
        _no_host_reads(m)
        outs = [fn(z, zt, target) for z in (zs, bad)]  # no host read, no error: the runner's guard reads
    for name, value in outs[1].items():  # every term, batch-level ones (MLKD's cc, bc) included
        assert not torch.isfinite(value), name
    assert all(torch.isfinite(v) for v in outs[0].values()) == (weighting is not _nan_policy)
