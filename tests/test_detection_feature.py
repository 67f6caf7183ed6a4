"""The FitNet-style FPN feature term: adapter, per-image values, EA's per-image weights, against loops."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from test_detection_distill import TINY, _batch

import eakd
from eakd.detection import DetectionDistiller, build_detector
from eakd.detection.distill import feature_mse, per_image_mean, student_forward, teacher_roi_logits


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reference_feature_loss(
    student_maps: dict[str, torch.Tensor],
    teacher_maps: dict[str, torch.Tensor],
    adapter: torch.nn.Conv2d,
    image_weights: list[float] | None,
) -> torch.Tensor:
    """Loops: per image, per level, mean of (W x_s + b - x_t)^2 over channels and pixels; mean over levels;
    times the image's weight; mean over images."""
    batch = next(iter(student_maps.values())).shape[0]
    w = adapter.weight[:, :, 0, 0]  # (F_t, F_s)
    total = torch.zeros(())
    for i in range(batch):
        levels = []
        for name, fs in student_maps.items():
            x = fs[i].reshape(fs.shape[1], -1)  # (F_s, h*w)
            y = w @ x + adapter.bias[:, None]
            levels.append(((y - teacher_maps[name][i].reshape(y.shape[0], -1)) ** 2).mean())
        value = sum(levels) / len(levels)
        total = total + value * (1.0 if image_weights is None else image_weights[i])
    return total / batch


def test_feature_mse_through_adapter_matches_loops_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    fs = {"0": torch.randn(3, 4, 6, 6, generator=g), "pool": torch.randn(3, 4, 1, 1, generator=g)}
    ft = {"0": torch.randn(3, 7, 6, 6, generator=g), "pool": torch.randn(3, 7, 1, 1, generator=g)}
    adapter = torch.nn.Conv2d(4, 7, 1)
    weights = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0])  # per RoI; images hold 2, 2, 1 RoIs
    w_img = per_image_mean(weights, [2, 2, 1])
    assert torch.allclose(w_img, torch.tensor([1.25, 0.5, 3.0]))
    per_image = feature_mse({k: adapter(v) for k, v in fs.items()}, ft)
    assert per_image.shape == (3,)
    fast = eakd.losses.reduce.weighted_mean(per_image, w_img)
    (g_fast,) = torch.autograd.grad(fast, adapter.weight)
    ref = _reference_feature_loss(fs, ft, adapter, w_img.tolist())
    (g_ref,) = torch.autograd.grad(ref, adapter.weight)
    assert torch.allclose(fast, ref, atol=1e-5)
    assert torch.allclose(g_fast, g_ref, atol=1e-5)


def _seeded_forward(distiller: DetectionDistiller, teacher, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # RoI sampling draws random numbers: the same seed samples the same RoIs
    return distiller(*_batch(), teacher, epoch=0.0)


@pytest.mark.parametrize("weighting", ["none", "ea"])
def test_distiller_feature_term_matches_reference_and_ea_weights_compose(weighting: str) -> None:
    torch.manual_seed(0)
    student = build_detector("mobilenet_v3_small", 2, **TINY)
    teacher = build_detector("mobilenet_v3_small", 2, **{**TINY, "fpn_channels": 24}).eval()
    policy = {"weighting": "ea", "tau": 4.0} if weighting == "ea" else {"weighting": "none"}
    loss = eakd.DistillLoss("kd", temperature=1.0, kd_weight=0.0, **policy)
    distiller = DetectionDistiller(student, loss, feature_weight=2.0, teacher_channels=24)
    assert distiller.adapter is not None and distiller.adapter.out_channels == 24
    out = _seeded_forward(distiller, teacher)
    assert float(out["loss_roi_kd"].detach()) == 0.0  # the RoI-logit term off: only its weights are used
    # the reference: the same RoIs (same seed), the student's maps, the teacher's maps, loops
    torch.manual_seed(0)
    roi = student_forward(student, *_batch())
    _, t_maps = teacher_roi_logits(teacher, roi.images, roi.proposals)
    w_img = None
    if weighting == "ea":
        w = distiller.last["weights"]
        assert w is not None and w.shape == (roi.logits.shape[0],)
        counts = [len(p) for p in roi.proposals]
        w_img = [float(part.mean()) for part in w.split(counts)]  # an image's weight: mean of its RoIs'
    expected = 2.0 * _reference_feature_loss(roi.features, t_maps, distiller.adapter, w_img)
    assert torch.allclose(out["loss_fpn_mse"], expected, atol=1e-5)
    params = [distiller.adapter.weight, distiller.adapter.bias, *student.backbone.fpn.parameters()]
    got = torch.autograd.grad(out["loss_fpn_mse"], params)
    ref = torch.autograd.grad(expected, params)
    for a, b in zip(got, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert distiller.adapter.weight.grad is None and all(p.grad is None for p in teacher.parameters())


def test_feature_term_alone_and_its_settings() -> None:
    torch.manual_seed(0)
    student = build_detector("mobilenet_v3_small", 2, **TINY)
    teacher = build_detector("mobilenet_v3_small", 2, **TINY).eval()
    plain = DetectionDistiller(student)
    assert plain.adapter is None
    alone = DetectionDistiller(student, None, feature_weight=1.0)  # no RoI loss: unweighted feature term
    out = _seeded_forward(alone, teacher)
    assert "loss_fpn_mse" in out and not any(k.startswith("loss_roi") for k in out) and alone.last == {}
    out["loss_fpn_mse"].backward()
    assert alone.adapter is not None and alone.adapter.weight.grad is not None
    with pytest.raises(ValueError, match="feature_weight"):
        DetectionDistiller(student, None, feature_weight=-1.0)
    with pytest.raises(ValueError, match="teacher_channels"):
        feature_mse({"0": torch.zeros(1, 3, 2, 2)}, {"0": torch.zeros(1, 5, 2, 2)})
