"""MLKD, CTKD, FitNet and ReviewKD against plain references written here: values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

import eakd
from eakd.losses.feature import FitNet, ReviewKD, hcl_loss
from eakd.losses.logit import dkd_loss, kd_loss
from eakd.losses.mlkd import (
    batch_correlation_loss,
    class_correlation_loss,
    confidence_mask,
    mlkd_loss,
    multi_temperature_kd,
)
from eakd.losses.temperature import CTKD, GlobalTemperature, InstanceTemperature, ctkd_lambda, grad_reverse

N, K = 5, 6
ATOL = 1e-5


def logits(seed: int, n: int = N, k: int = K, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, k, generator=g)).requires_grad_()


def grad(out: torch.Tensor, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradient of sum(v * out) for a fixed cotangent v (mixes the samples), or of a 0-dim out."""
    if out.dim():
        v = torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape).to(out.dtype)
        out = (out * v).sum()
    return torch.autograd.grad(out, leaves, allow_unused=True)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=1e-4)


# ---- plain references: loops over samples, no fused ops ----


def softmax_row(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max())
    return e / e.sum()


def ref_kd(zs: torch.Tensor, zt: torch.Tensor, temps: list) -> torch.Tensor:
    """temps[n]: the temperature of sample n (float or 0-dim tensor)."""
    out = []
    for n in range(zs.shape[0]):
        t = temps[n]
        p, q = softmax_row(zt[n].double() / t), softmax_row(zs[n].double() / t)
        out.append(sum(p[k] * (torch.log(p[k]) - torch.log(q[k])) for k in range(zs.shape[1])) * t**2)
    return torch.stack(out)


def gram(p: torch.Tensor, over_classes: bool) -> torch.Tensor:
    """Class Gram G[i, j] = sum_n p[n, i] p[n, j], or batch Gram G[n, m] = sum_k p[n, k] p[m, k]."""
    a = p.T if over_classes else p
    size = a.shape[0]
    return torch.stack([torch.stack([(a[i] * a[j]).sum() for j in range(size)]) for i in range(size)])


def probs(z: torch.Tensor, t: float) -> torch.Tensor:
    return torch.stack([softmax_row(z[n].double() / t) for n in range(z.shape[0])])


def ref_cc(zs: torch.Tensor, zt: torch.Tensor, t: float) -> torch.Tensor:
    diff = gram(probs(zt, t), True) - gram(probs(zs, t), True)
    return (diff**2).sum() / zs.shape[1]


def ref_bc_rows(zs: torch.Tensor, zt: torch.Tensor, t: float) -> torch.Tensor:
    diff = gram(probs(zt, t), False) - gram(probs(zs, t), False)
    return torch.stack([(diff[n] ** 2).sum() for n in range(zs.shape[0])])


def ref_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([((a[n].double() - b[n].double()) ** 2).mean() for n in range(a.shape[0])])


def block_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """Average pooling of (N, C, H, W) to (N, C, size, size) by explicit blocks (H divisible by size)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, size, h // size, size, w // size).mean(dim=(3, 5))


def ref_hcl(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    total = 0.0
    for fs, ft in zip(student, teacher, strict=True):
        h = fs.shape[-2]
        sizes = [size for size in (4, 2, 1) if size < h]  # e.g. H = 2: only 1x1, at weight 1/2
        terms, weights = [ref_mse(fs, ft)], [1.0]
        for i, size in enumerate(sizes):
            terms.append(0.5 ** (i + 1) * ref_mse(block_mean(fs, size), block_mean(ft, size)))
            weights.append(0.5 ** (i + 1))
        total = total + sum(terms) / sum(weights)
    return total


# ---- kd_loss / dkd_loss with tensor temperatures ----


def test_kd_per_sample_temperature_values_and_grads() -> None:
    zs, zt = logits(0), logits(1).detach()
    t = torch.tensor([1.0, 2.0, 3.5, 4.0, 8.0], requires_grad=True)
    out, ref = kd_loss(zs, zt, t), ref_kd(zs, zt, list(t))
    close(out, ref)
    for a, b in zip(grad(out, zs, t), grad(ref, zs, t), strict=True):
        close(a, b)


def test_kd_scalar_tensor_temperature_equals_float() -> None:
    zs, zt = logits(0), logits(1).detach()
    close(kd_loss(zs, zt, torch.tensor(3.0)), kd_loss(zs, zt, 3.0))


@pytest.mark.parametrize(
    "bad", [torch.ones(N, 1), torch.ones(N + 1), torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0])]
)
def test_kd_rejects_bad_temperature_tensor(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(logits(0), logits(1), bad)


def test_dkd_per_sample_temperature_matches_rows() -> None:
    zs, zt = logits(0), logits(1).detach()
    target = torch.tensor([0, 1, 2, 3, 4])
    t = torch.tensor([1.0, 2.0, 3.5, 4.0, 8.0])
    rows = [
        dkd_loss(zs[n : n + 1], zt[n : n + 1], target[n : n + 1], 1.0, 8.0, float(t[n])) for n in range(N)
    ]
    close(dkd_loss(zs, zt, target, 1.0, 8.0, t), torch.cat(rows))


# ---- MLKD ----


def test_multi_temperature_kd_sums_over_temperatures() -> None:
    zs, zt = logits(0), logits(1).detach()
    temps = [4.0, 2.0, 3.0]
    out, ref = multi_temperature_kd(zs, zt, temps), sum(ref_kd(zs, zt, [t] * N) for t in temps)
    close(out, ref)
    close(grad(out, zs)[0], grad(ref, zs)[0])


def test_correlation_terms_values_and_grads() -> None:
    zs, zt = logits(2), logits(3).detach()
    cc, ref = class_correlation_loss(zs, zt, 2.0), ref_cc(zs, zt, 2.0)
    assert cc.dim() == 0
    close(cc, ref)
    close(grad(cc, zs)[0], grad(ref, zs)[0])
    bc, ref = batch_correlation_loss(zs, zt, 3.0), ref_bc_rows(zs, zt, 3.0)
    assert bc.shape == (N,)
    close(bc, ref)
    close(grad(bc, zs)[0], grad(ref, zs)[0])


def test_correlation_terms_need_2d_logits() -> None:
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        class_correlation_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), 1.0)


def ref_mlkd(zs: torch.Tensor, zt: torch.Tensor, keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    temps = [4.0, 2.0, 3.0, 5.0, 6.0]  # MLKD's set {T, 2, 3, 5, 6}, T = 4
    kd = sum(ref_kd(zs, zt, [t] * N) for t in temps)
    bc = sum(ref_bc_rows(zs, zt, t) for t in temps)
    if keep is not None:
        kd, bc = kd * keep, bc * keep
    return {"kd": kd, "cc": sum(ref_cc(zs, zt, t) for t in temps), "bc": bc.mean()}


def test_mlkd_loss_values_and_grads() -> None:
    zs, zt = logits(4), logits(5).detach()
    out, ref = mlkd_loss(zs, zt), ref_mlkd(zs, zt)
    assert out["kd"].shape == (N,) and out["cc"].dim() == 0 and out["bc"].dim() == 0
    for name in ("kd", "cc", "bc"):
        close(out[name], ref[name])
        close(grad(out[name], zs)[0], grad(ref[name], zs)[0])


def test_confidence_mask_against_sorted_median() -> None:
    zt = logits(6)
    conf = torch.stack([softmax_row(zt[n].detach()).max() for n in range(N)])
    median = conf.sort().values[N // 2]
    assert torch.equal(confidence_mask(zt), conf <= median)
    assert torch.equal(confidence_mask(zt, keep="above"), conf >= median)
    assert int(confidence_mask(zt, 100.0).sum()) == N
    with pytest.raises(ValueError, match="percentile"):
        confidence_mask(zt, 101.0)


def test_mlkd_confidence_masking() -> None:
    zs, zt = logits(4), logits(5).detach()
    keep = confidence_mask(zt, 40.0, "above").double()
    out, ref = mlkd_loss(zs, zt, confidence_percentile=40.0, confidence_keep="above"), ref_mlkd(zs, zt, keep)
    for name in ("kd", "cc", "bc"):
        close(out[name], ref[name])
        close(grad(out[name], zs)[0], grad(ref[name], zs)[0])
    assert (out["kd"][keep == 0] == 0).all()


def test_mlkd_through_distill_loss_weights_only_kd() -> None:
    zs, zt = logits(7), logits(8).detach()
    out = eakd.DistillLoss("mlkd", weighting="ea", kd_weight=2.0)(zs, zt)
    w = eakd.ea_weights(zs, zt).double()
    ref = ref_mlkd(zs, zt)
    expected = {
        "loss_kd": 2.0 * (w * ref["kd"]).mean(),
        "loss_cc": 2.0 * ref["cc"],
        "loss_bc": 2.0 * ref["bc"],
    }
    assert set(out) == set(expected)
    for name, value in expected.items():
        close(out[name], value)
    close(grad(sum(out.values()), zs)[0], grad(sum(expected.values()), zs)[0])


# ---- CTKD ----


def test_grad_reverse_flips_and_scales() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    v = torch.randn(3, 4)
    (g,) = torch.autograd.grad((y * v).sum(), x)
    close(g, -0.7 * v)


def test_ctkd_lambda_curriculum() -> None:
    assert ctkd_lambda(0.0, 2.0, 0.0, 10.0) == 0.0
    assert ctkd_lambda(-3.0, 2.0, 0.0, 10.0) == 0.0
    assert ctkd_lambda(10.0, 2.0, 0.0, 10.0) == pytest.approx(2.0)
    assert ctkd_lambda(50.0, 2.0, 0.0, 10.0) == pytest.approx(2.0)
    assert ctkd_lambda(7.0, 2.0, 2.0, 12.0) == pytest.approx(1.0)  # halfway
    assert ctkd_lambda(4.0, 1.0, 2.0, 12.0) == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.2)))
    assert ctkd_lambda(1.0, 1.0, 5.0, 5.0) == 0.0 and ctkd_lambda(5.0, 1.0, 5.0, 5.0) == 1.0


def test_temperature_modules_start_at_init_and_stay_in_range() -> None:
    zs, zt = logits(0), logits(1)
    assert GlobalTemperature(4.0)(zs, zt).item() == pytest.approx(4.0, abs=1e-5)
    inst = InstanceTemperature(K, hidden=8, init=4.0)
    close(inst(zs, zt), torch.full((N,), 4.0))
    torch.nn.init.normal_(inst.mlp[2].weight)
    t = inst(1e4 * zs, -1e4 * zt)
    assert t.shape == (N,) and bool(((t >= 1.0) & (t <= 21.0)).all())
    with pytest.raises(ValueError, match="init"):
        GlobalTemperature(25.0)


def test_ctkd_global_kd_values_and_reversed_temperature_grad() -> None:
    zs, zt = logits(0), logits(1).detach()
    target = torch.zeros(N, dtype=torch.long)
    loss = CTKD(mode="global", init_temperature=5.0, max_lambda=0.5, lambda_start=0, lambda_end=4)
    assert loss.lam == 0.0
    loss.set_epoch(4)
    assert loss.lam == pytest.approx(0.5)
    out = loss(zs, zt, target)
    p = loss.temperature.p
    temp = 1.0 + 20.0 * torch.sigmoid(p)  # reference: the same temperature, no reversal
    ref = ref_kd(zs, zt, [temp] * N)
    close(out, ref)
    close(loss.last_temperature, torch.tensor(5.0))
    g_zs, g_p = grad(out, zs, p)
    r_zs, r_p = grad(ref, zs, p)
    close(g_zs, r_zs)
    close(g_p, -0.5 * r_p)


def test_ctkd_instance_dkd_flips_predictor_grads() -> None:
    zs, zt = logits(2), logits(3).detach()
    target = torch.tensor([0, 1, 2, 3, 4])
    loss = CTKD(mode="instance", base="dkd", num_classes=K, hidden=8, alpha=1.0, beta=2.0, lambda_end=0)
    loss.set_epoch(1)
    assert loss.lam == 1.0
    out = loss(zs, zt, target)
    temps = loss.temperature(zs, zt)  # reference: plain autograd through the predictor
    ref = torch.cat(
        [dkd_loss(zs[n : n + 1], zt[n : n + 1], target[n : n + 1], 1.0, 2.0, temps[n]) for n in range(N)]
    )
    close(out, ref)
    params = list(loss.temperature.parameters())
    got, want = grad(out, zs, *params), grad(ref, zs, *params)
    close(got[0], want[0])
    for a, b in zip(got[1:], want[1:], strict=True):
        close(a, -b)


def test_ctkd_through_distill_loss() -> None:
    zs, zt = logits(4), logits(5).detach()
    target = torch.tensor([0, 1, 2, 3, 4])
    dl = eakd.DistillLoss("ctkd", weighting="ea", mode="instance", num_classes=K, hidden=8)
    assert {n for n, _ in dl.named_parameters()} >= {"module.temperature.mlp.0.weight"}
    out = dl(zs, zt, target)
    close(out["loss_kd"], eakd.weighted_mean(dl.module(zs, zt, target), eakd.ea_weights(zs, zt)))
    with pytest.raises(ValueError, match="mode"):
        CTKD(mode="local")


# ---- FitNet ----


def feats(seed: int, channels: list[int], sizes: list[int], preact: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    maps = [
        torch.randn(N, c, s, s, generator=g).requires_grad_() for c, s in zip(channels, sizes, strict=True)
    ]
    out = {"feats": maps, "pooled": maps[-1].mean(dim=(2, 3))}
    if preact:
        out["preact_feats"] = maps
    return out


def test_fitnet_values_and_grads() -> None:
    fs, ft = feats(0, [3, 4, 6], [8, 8, 4]), feats(1, [3, 5, 7], [8, 8, 4])
    loss = FitNet(student_channels=4, teacher_channels=5, hint_layer=1)
    out = loss(fs, ft)
    ref = ref_mse(loss.connector(fs["feats"][1]), ft["feats"][1])
    assert out.shape == (N,)
    close(out, ref)
    close(grad(out, fs["feats"][1])[0], grad(ref, fs["feats"][1])[0])
    assert grad(out, ft["feats"][1])[0] is None  # the teacher is detached


def test_fitnet_resizes_to_teacher_and_checks_channels() -> None:
    fs, ft = feats(0, [3, 4], [8, 8]), feats(1, [3, 5], [4, 4])
    loss = FitNet(4, 5, hint_layer=1)
    out = loss(fs, ft)
    close(out, ref_mse(block_mean(loss.connector(fs["feats"][1]), 4), ft["feats"][1]))
    with pytest.raises(ValueError, match=r"expected \(N, 6, H, W\)"):
        FitNet(4, 6, hint_layer=1)(fs, ft)


# ---- ReviewKD ----


def test_hcl_loss_values_and_grads() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(N, 2, 8, 8), (N, 3, 4, 4), (N, 3, 2, 2), (N, 4, 1, 1)]
    fs = [torch.randn(*s, generator=g).requires_grad_() for s in shapes]
    ft = [torch.randn(*s, generator=g) for s in shapes]
    out, ref = hcl_loss(fs, ft), ref_hcl(fs, ft)
    assert out.shape == (N,)
    close(out, ref)
    for a, b in zip(grad(out, *fs), grad(ref, *fs), strict=True):
        close(a, b)


def review_setup(teacher_sizes: list[int]) -> tuple[ReviewKD, dict, dict]:
    fs = feats(0, [3, 4, 6], [8, 8, 4])  # stem, two stages; pooled (N, 6)
    ft = feats(1, [3, 5, 7], teacher_sizes, preact=True)
    return ReviewKD(in_channels=[4, 6, 6], out_channels=[5, 7, 7], mid_channel=4), fs, ft


def test_reviewkd_matches_manual_fusion_and_hcl() -> None:
    loss, fs, ft = review_setup([8, 8, 4])
    out = loss(fs, ft)
    s1, s2, sp = fs["feats"][1], fs["feats"][2], fs["pooled"][:, :, None, None]
    t1, t2, tp = ft["preact_feats"][1], ft["preact_feats"][2], ft["pooled"][:, :, None, None]
    o3, r = loss.abfs[2](sp, None, (1, 1))
    o2, r = loss.abfs[1](s2, r, (4, 4))
    o1, _ = loss.abfs[0](s1, r, (8, 8))
    assert (o1.shape, o2.shape, o3.shape) == (t1.shape, t2.shape, tp.shape)
    ref = ref_hcl([o1, o2, o3], [t1, t2, tp])
    close(out, ref)
    leaves = [s1, s2, *loss.parameters()]
    for a, b in zip(grad(out, *leaves), grad(ref, *leaves), strict=True):
        assert a is not None
        close(a, b)
    assert loss.abfs[2].attention is None and loss.abfs[0].attention is not None


def test_reviewkd_spatial_mismatch_and_errors() -> None:
    loss, fs, ft = review_setup([8, 4, 2])
    assert loss(fs, ft).shape == (N,)
    del ft["preact_feats"]
    with pytest.raises(ValueError, match="preact_feats"):
        loss(fs, ft)
    with pytest.raises(ValueError, match="channel counts"):
        ReviewKD([4, 6], [5, 7], 4)(fs, feats(1, [3, 5, 7], [8, 8, 4], preact=True))


def test_feature_losses_through_distill_loss() -> None:
    zs, zt = logits(0), logits(1).detach()
    fs, ft = feats(0, [3, 4, 6], [8, 8, 4]), feats(1, [3, 5, 7], [8, 8, 4], preact=True)
    w = eakd.ea_weights(zs, zt)
    dl = eakd.DistillLoss("fitnet", weighting="ea", student_channels=4, teacher_channels=5, hint_layer=1)
    out = dl(zs, zt, student_feats=fs, teacher_feats=ft)
    close(out["loss_kd"], eakd.weighted_mean(dl.module(fs, ft), w))
    dl = eakd.DistillLoss(
        "reviewkd", weighting="none", in_channels=[4, 6, 6], out_channels=[5, 7, 7], mid_channel=4
    )
    out = dl(zs, zt, student_feats=fs, teacher_feats=ft)
    close(out["loss_kd"], dl.module(fs, ft).mean())
    assert dl.last["weights"] is None


@pytest.mark.parametrize(
    ("teacher_n", "device", "message"),
    [
        (1, "cpu", f"differ in batch size: student has {N} samples, teacher has 1"),  # would broadcast
        (N + 1, "cpu", f"differ in batch size: student has {N} samples, teacher has {N + 1}"),
        (N, "meta", r"student .* are on cpu but teacher .* on meta"),
    ],
)
def test_feature_losses_refuse_other_batches_and_devices(teacher_n: int, device: str, message: str) -> None:
    fs = feats(0, [3, 4, 6], [8, 8, 4])
    maps = [torch.randn(teacher_n, c, s, s, device=device) for c, s in zip([3, 5, 7], [8, 8, 4], strict=True)]
    ft = {"feats": maps, "preact_feats": maps, "pooled": maps[-1].mean(dim=(2, 3))}
    with pytest.raises(ValueError, match=message):
        FitNet(4, 5, hint_layer=1)(fs, ft)
    with pytest.raises(ValueError, match=message):
        ReviewKD(in_channels=[4, 6, 6], out_channels=[5, 7, 7], mid_channel=4)(fs, ft)
    if device == "meta":  # the same shapes, other devices
        with pytest.raises(ValueError, match=message):
            hcl_loss([torch.ones(m.shape) for m in maps], maps)
