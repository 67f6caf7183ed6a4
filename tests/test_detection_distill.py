"""RoI-logit distillation for Faster R-CNN: the loss against a reference, a few teacher+student steps, AP."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

import eakd
from eakd.detection import DetectionDistiller, box_ap, build_detector, evaluate_detector
from eakd.detection.distill import feature_mse, per_image_mean

TINY = {
    "min_size": 64,
    "max_size": 64,
    "returned_layers": [2, 3, 4],
    "anchor_sizes": [8, 16, 32, 64],
    "fpn_channels": 16,
    "representation_size": 32,
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 20,
    "box_batch_size_per_image": 32,
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the CPUs are shared and small ops suffer from thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[5.0, 5, 30, 30], [34, 20, 60, 50]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # an empty image
    ]
    return images, targets


def _reference_ea_kd(zs: torch.Tensor, zt: torch.Tensor, tau: float, temperature: float) -> torch.Tensor:
    """Naive EA-KD: per-RoI weight 0.5 H_t (1 + H_s / ln K) times T^2 KL(p_t || p_s), mean over RoIs."""
    k = zs.shape[1]

    def ent(z: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(z / tau, dim=1)
        return -(p * torch.log(p)).sum(dim=1)

    w = 0.5 * ent(zt) * (1 + ent(zs) / math.log(k))
    pt = torch.softmax(zt / temperature, dim=1)
    ps = torch.softmax(zs / temperature, dim=1)
    kl = (pt * (torch.log(pt) - torch.log(ps))).sum(dim=1) * temperature**2
    return (w * kl).mean()


def test_roi_loss_matches_reference_on_fixed_logits() -> None:
    # 5 RoIs, 3 classes + background: H_ub = ln 4 comes from the logits' width
    zs = torch.tensor(
        [
            [2.0, 0.1, -1.0, 0.3],
            [0.0, 0.0, 0.0, 0.0],
            [-1.0, 3.0, 0.5, 0.2],
            [1.0, 1.0, -2, 0],
            [0.5, -0.5, 2, 1],
        ]
    )
    zt = torch.tensor(
        [
            [3.0, 0.0, -1.0, 0.0],
            [0.2, 0.1, 0.0, -0.1],
            [0.0, 4.0, 0.0, 0.0],
            [2.0, 0.0, -1, 0],
            [0.0, 0.0, 3, 0],
        ]
    )
    loss = eakd.DistillLoss("kd", "ea", tau=4.0, temperature=1.0)
    out = loss(zs, zt, target=torch.tensor([0, 0, 1, 0, 2]))
    assert set(out) == {"loss_kd"}
    expected = _reference_ea_kd(zs, zt, tau=4.0, temperature=1.0)
    assert torch.allclose(out["loss_kd"], expected, atol=1e-6)
    assert loss.last["weights"] is not None and loss.last["weights"].shape == (5,)
    assert float(loss.last["weights"].max()) <= math.log(4)


def test_feature_term_is_weighted_per_image() -> None:
    fs = {"0": torch.ones(2, 3, 4, 4), "1": torch.zeros(2, 3, 2, 2)}
    ft = {"0": torch.zeros(2, 3, 4, 4), "1": torch.full((2, 3, 2, 2), 2.0)}
    ft["0"][1] = 1.0  # image 1 matches on level 0
    per_image = feature_mse(fs, ft)
    assert torch.allclose(per_image, torch.tensor([(1 + 4) / 2, (0 + 4) / 2]))
    w = per_image_mean(torch.tensor([1.0, 3.0, 0.5]), [2, 1])
    assert torch.allclose(w, torch.tensor([2.0, 0.5]))
    with pytest.raises(ValueError, match="fpn_channels"):
        feature_mse(fs, {"0": torch.zeros(2, 5, 4, 4), "1": ft["1"]})


def test_distiller_uses_student_rois_and_reference_loss() -> None:
    torch.manual_seed(0)
    student = build_detector("mobilenet_v3_small", 2, **TINY)
    teacher = build_detector("mobilenet_v3_small", 2, **TINY).eval()
    loss = eakd.DistillLoss("kd", "ea", tau=4.0, temperature=1.0)
    distiller = DetectionDistiller(student, loss, feature_weight=0.5)
    images, targets = _batch()
    out = distiller(images, targets, teacher, epoch=0.0)
    detector_terms = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(out) == detector_terms | {"loss_roi_kd", "loss_fpn_mse"}
    last = distiller.last
    zs, zt = last["student_logits"], last["teacher_logits"]
    assert zs is not None and zt is not None and zs.shape == zt.shape and zs.shape[1] == 3  # 2 classes + bg
    assert zs.shape[0] == 2 * TINY["box_batch_size_per_image"]
    assert torch.allclose(out["loss_roi_kd"], _reference_ea_kd(zs, zt, 4.0, 1.0), atol=1e-6)
    assert last["target"] is not None and set(last["target"].tolist()) <= {0, 1, 2}
    # the teacher really classifies the student's proposals: same RoIs through the teacher's head
    with torch.no_grad():
        plain = DetectionDistiller(student)(images, targets)
    assert set(plain) == detector_terms


def test_mismatched_transforms_are_refused() -> None:
    student = build_detector("mobilenet_v3_small", 2, **TINY)
    teacher = build_detector("mobilenet_v3_small", 2, **{**TINY, "min_size": 96, "max_size": 96})
    distiller = DetectionDistiller(student, eakd.DistillLoss("kd", "ea"))
    with pytest.raises(ValueError, match="min_size"):
        distiller(*_batch(), teacher)


def test_few_training_steps_teacher_and_student() -> None:
    torch.manual_seed(0)
    student = build_detector("mobilenet_v3_small", 2, **TINY)
    teacher = build_detector("resnet18", 2, **TINY)
    images, targets = _batch()
    opt_t = torch.optim.SGD(teacher.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):  # a briefly trained teacher
        losses = teacher(images, targets)
        opt_t.zero_grad()
        sum(losses.values()).backward()
        opt_t.step()
    teacher.eval().requires_grad_(False)
    opt_t.zero_grad(set_to_none=True)
    distiller = DetectionDistiller(student, eakd.DistillLoss("dkd", "ea", tau=4.0, temperature=1.0, beta=2.0))
    opt = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in student.roi_heads.parameters()]
    frozen_teacher = [p.detach().clone() for p in teacher.parameters()]
    for step in range(3):
        losses = distiller(images, targets, teacher, epoch=float(step))
        total = sum(losses.values())
        assert torch.isfinite(total) and "loss_roi_kd" in losses
        opt.zero_grad()
        total.backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.roi_heads.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(frozen_teacher, teacher.parameters(), strict=True))
    assert all(p.grad is None for p in teacher.parameters())  # no_grad: nothing flows into the teacher
    metrics = evaluate_detector(student, [(images, targets)])
    assert set(metrics) == {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"} and student.training


def test_ap_of_perfect_and_empty_predictions() -> None:
    targets = [
        {"boxes": torch.tensor([[10.0, 10, 50, 50], [60, 5, 90, 40]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[0.0, 0, 20, 30]]), "labels": torch.tensor([1])},
    ]
    perfect = [{**t, "scores": torch.linspace(0.9, 0.5, len(t["labels"]))} for t in targets]
    # areas 1600 and 1050 (medium: 32^2..96^2), 600 (small); no large box: -1 (COCO's convention)
    sizes = {"AP_small": 1.0, "AP_medium": 1.0, "AP_large": -1.0}
    assert box_ap(perfect, targets) == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, **sizes}
    none = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    empty = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP_small": 0.0, "AP_medium": 0.0, "AP_large": -1.0}
    assert box_ap([none, none], targets) == empty
    only_medium = [perfect[0], none]  # the small box missed: AP_small 0, AP_medium 1
    assert (
        box_ap(only_medium, targets)["AP_small"] == 0.0 and box_ap(only_medium, targets)["AP_medium"] == 1.0
    )
