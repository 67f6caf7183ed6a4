"""RoI-logit distillation for torchvision Faster R-CNN (EA-KD's detection setting).

The student runs as in training (transform, backbone, RPN, RoI sampling, box head) and keeps its own
losses. The teacher's RoI head classifies the student's sampled proposals on the same input tensor, under
no_grad, and the RoI class logits (R, C + 1) (classes + background) are distilled per RoI with a
``DistillLoss`` (any logit loss, any weight policy; H_ub = ln(C + 1) from the logits' width). An optional
FPN feature MSE is computed per image and weighted by the mean RoI weight of that image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss

from eakd.distill import DistillLoss
from eakd.losses.reduce import weighted_mean

Target = dict[str, torch.Tensor]


@dataclass
class RoIOutputs:
    """What a detector's training pass exposes: losses (torchvision names) and its sampled RoIs.

    images: the transformed, padded batch; features: FPN maps {name: (B, F, h, w)}; proposals: per image
    (R_i, 4) boxes in input-tensor pixels; logits (R, C + 1) and labels (R,) (0 = background) of all
    sampled RoIs, images concatenated in order.
    """

    losses: dict[str, torch.Tensor]
    images: ImageList
    features: dict[str, torch.Tensor]
    proposals: list[torch.Tensor]
    logits: torch.Tensor
    labels: torch.Tensor


def student_forward(model: FasterRCNN, images: list[torch.Tensor], targets: list[Target]) -> RoIOutputs:
    """The training pass of ``model`` (as ``model(images, targets)`` computes it), keeping the RoIs.

    images: float (3, H, W) in [0, 1]; targets: {"boxes" (M, 4) xyxy, "labels" (M,)} per image.
    """
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    proposals, rpn_losses = model.rpn(image_list, features, targets)
    heads = model.roi_heads
    proposals, _, labels, box_targets = heads.select_training_samples(proposals, targets)
    pooled = heads.box_roi_pool(features, proposals, image_list.image_sizes)
    logits, box_deltas = heads.box_predictor(heads.box_head(pooled))
    loss_cls, loss_box = fastrcnn_loss(logits, box_deltas, labels, box_targets)
    losses = {**rpn_losses, "loss_classifier": loss_cls, "loss_box_reg": loss_box}
    return RoIOutputs(losses, image_list, features, proposals, logits, torch.cat(labels))


@torch.no_grad()
def teacher_roi_logits(
    teacher: FasterRCNN, images: ImageList, proposals: list[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The teacher's RoI class logits (R, C + 1) on the given proposals, and its FPN features.

    images: the student's transformed batch (the two detectors must share their input transform).
    """
    features = teacher.backbone(images.tensors)
    heads = teacher.roi_heads
    pooled = heads.box_roi_pool(features, proposals, images.image_sizes)
    logits, _ = heads.box_predictor(heads.box_head(pooled))
    return logits, features


def check_compatible(student: FasterRCNN, teacher: FasterRCNN) -> None:
    """The teacher must see the student's input tensor: same resize, normalisation and padding."""
    for name in ("min_size", "max_size", "image_mean", "image_std", "size_divisible"):
        a, b = getattr(student.transform, name), getattr(teacher.transform, name)
        if a != b:
            raise ValueError(f"student and teacher detectors differ in transform.{name}: {a} vs {b}")


def feature_mse(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-image FPN feature MSE (B,): the mean over levels of each level's mean squared difference."""
    if student.keys() != teacher.keys():
        raise ValueError(f"FPN levels differ: student {list(student)}, teacher {list(teacher)}")
    per_level = []
    for name, fs in student.items():
        ft = teacher[name]
        if fs.shape != ft.shape:
            raise ValueError(
                f"FPN level {name!r}: student {tuple(fs.shape)} vs teacher {tuple(ft.shape)}; "
                "feature distillation needs equal FPN widths (fpn_channels)"
            )
        per_level.append((fs.float() - ft.float()).pow(2).mean(dim=(1, 2, 3)))
    return torch.stack(per_level).mean(dim=0)


def per_image_mean(values: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Mean of per-RoI values (R,) within each image, given RoIs per image -> (B,); 0 for no RoIs."""
    parts = values.split(counts)
    return torch.stack([p.mean() if p.numel() else values.new_zeros(()) for p in parts])


class DetectionDistiller(nn.Module):
    """The trainable side of detection distillation: a student detector and its distillation loss.

    ``forward(images, targets, teacher=None, epoch=None)`` returns the student's four detector losses
    plus, with a teacher and a loss, ``loss_roi_<term>`` (RoI logits) and with ``feature_weight`` > 0
    ``loss_fpn_mse``. After a call, ``last`` holds detached diagnostics: the loss's ``last``
    (``weights``, ``h_t``, ``h_s``, ``per_sample``: (R,) or None), ``target`` (R,) RoI labels (0 =
    background), ``student_logits`` and ``teacher_logits`` (R, C + 1).
    Pass the frozen teacher per call, so only this module is wrapped for data parallel training.
    """

    def __init__(self, student: FasterRCNN, loss: DistillLoss | None = None, feature_weight: float = 0.0):
        super().__init__()
        self.student = student
        self.loss = loss
        self.feature_weight = feature_weight
        self.last: dict[str, torch.Tensor | None] = {}

    def forward(
        self,
        images: list[torch.Tensor],
        targets: list[Target],
        teacher: FasterRCNN | None = None,
        epoch: float | None = None,
    ) -> dict[str, torch.Tensor]:
        distill = teacher is not None and (self.loss is not None or self.feature_weight > 0)
        if distill:
            check_compatible(self.student, teacher)
        out = student_forward(self.student, images, targets)
        losses = dict(out.losses)
        if not distill:
            return losses
        teacher.eval()
        t_logits, t_feats = teacher_roi_logits(teacher, out.images, out.proposals)
        weights = None
        if self.loss is not None:
            terms = self.loss(out.logits, t_logits, target=out.labels, epoch=epoch)
            losses.update({f"loss_roi_{k.removeprefix('loss_')}": v for k, v in terms.items()})
            weights = self.loss.last["weights"]
            self.last = {
                **self.loss.last,
                "target": out.labels.detach(),
                "student_logits": out.logits.detach(),
                "teacher_logits": t_logits,
            }
        if self.feature_weight > 0:
            per_image = feature_mse(out.features, t_feats)
            counts = [len(p) for p in out.proposals]
            w_img = None if weights is None else per_image_mean(weights, counts)
            losses["loss_fpn_mse"] = self.feature_weight * weighted_mean(per_image, w_img)
        return losses
