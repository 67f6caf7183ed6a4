"""RoI-logit distillation for torchvision Faster R-CNN (EA-KD's detection setting).

The student runs as in training (transform, backbone, RPN, RoI sampling, box head) and keeps its own
losses. The teacher's RoI head classifies the student's sampled proposals on the same input tensor, under
no_grad, and the RoI class logits (R, C + 1) (classes + background) are distilled per RoI with a
``DistillLoss`` (any logit loss, any weight policy; H_ub = ln(C + 1) from the logits' width). An optional
FitNet-style FPN feature term: the student's FPN maps go through a learnt 1x1 convolution (the adapter,
student width -> teacher width, shared by the levels), and the squared difference to the teacher's maps is
averaged per image (over each level, then over the levels). A weight policy's per-RoI weights reach it as
the mean weight of each image's sampled RoIs (the weight comes from the logits, as EA-KD prescribes for
feature losses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import box_iou

from eakd.distill import DistillLoss
from eakd.losses.reduce import weighted_mean

Target = dict[str, torch.Tensor]


@dataclass
class RoIOutputs:
    """What a detector's training pass exposes: losses (torchvision names) and its sampled RoIs.

    images: the transformed, padded batch; targets: the targets in the same pixels; features: FPN maps
    {name: (B, F, h, w)}; proposals: per image (R_i, 4) boxes in input-tensor pixels; logits (R, C + 1) and
    labels (R,) (0 = background) of all sampled RoIs, images concatenated in order.
    """

    losses: dict[str, torch.Tensor]
    images: ImageList
    targets: list[Target]
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
    return RoIOutputs(losses, image_list, targets, features, proposals, logits, torch.cat(labels))


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


def roi_max_iou(proposals: list[torch.Tensor], targets: list[Target]) -> torch.Tensor:
    """(R,) each sampled RoI's largest IoU with a ground-truth box of its image (0 for an image without
    boxes); proposals (R_i, 4) and target boxes (M_i, 4) xyxy in the same pixels, images concatenated."""
    parts = [
        box_iou(p, t["boxes"]).amax(dim=1) if len(t["boxes"]) else p.new_zeros(len(p))
        for p, t in zip(proposals, targets, strict=True)
    ]
    return torch.cat(parts)


def feature_mse(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-image FPN feature MSE (B,): the mean over levels of each level's mean squared difference.

    student: the (adapted) student maps {level: (B, F, h, w)}; teacher: the teacher's, same shapes."""
    if student.keys() != teacher.keys():
        raise ValueError(f"FPN levels differ: student {list(student)}, teacher {list(teacher)}")
    per_level = []
    for name, fs in student.items():
        ft = teacher[name]
        if fs.shape != ft.shape:
            raise ValueError(
                f"FPN level {name!r}: student {tuple(fs.shape)} vs teacher {tuple(ft.shape)}; "
                "the adapter maps the student's FPN width to teacher_channels (the teacher's fpn_channels)"
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
    ``loss_fpn_mse`` (FitNet-style, through ``adapter``: a 1x1 convolution from the student's FPN width to
    ``teacher_channels``, default the student's own). After a call, ``last`` holds detached diagnostics: the
    loss's ``last`` (``weights``, ``h_t``, ``h_s``, ``per_sample``: (R,) or None), ``target`` (R,) RoI labels
    (0 = background), ``iou`` (R,) each RoI's largest IoU with a ground-truth box, ``student_logits`` and
    ``teacher_logits`` (R, C + 1). Pass the frozen teacher per call, so only this module is wrapped for data
    parallel training; the adapter is trained with the student and not used at inference.
    """

    def __init__(
        self,
        student: FasterRCNN,
        loss: DistillLoss | None = None,
        feature_weight: float = 0.0,
        teacher_channels: int | None = None,
    ):
        super().__init__()
        if not feature_weight >= 0:
            raise ValueError(f"feature_weight must be >= 0, got {feature_weight}")
        self.student = student
        self.loss = loss
        self.feature_weight = feature_weight
        width = student.backbone.out_channels
        self.adapter = nn.Conv2d(width, teacher_channels or width, 1) if feature_weight > 0 else None
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
                "iou": roi_max_iou(out.proposals, out.targets),
                "student_logits": out.logits.detach(),
                "teacher_logits": t_logits,
            }
        if self.adapter is not None:
            adapted = {name: self.adapter(f) for name, f in out.features.items()}
            per_image = feature_mse(adapted, t_feats)
            counts = [len(p) for p in out.proposals]
            w_img = None if weights is None else per_image_mean(weights, counts)
            defer = self.loss is not None and not self.loss.sync_checks  # the loss's value-check mode
            losses["loss_fpn_mse"] = self.feature_weight * weighted_mean(per_image, w_img, defer=defer)
        return losses
