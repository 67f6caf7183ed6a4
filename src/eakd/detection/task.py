"""Detection as an engine task (``task: detection``): data, detectors and the RoI distiller from a config.

Config use (see docs/detection.md): ``data.name`` names a ``DATASETS`` builder ("coco", "voc", "csv",
"trees" or your own); ``model.student`` / ``model.teacher`` are backbone names with ``build_detector``
keyword arguments in ``*_options``; ``distill`` is the RoI-logit loss (``distill.ce_weight`` is ignored:
the detector keeps its own losses; ``distill.hparams.feature_weight`` > 0 adds the per-image FPN feature MSE).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset
from torchvision.models.detection import FasterRCNN

from eakd.detection.data import DetectionDataset, collate, detection_transform
from eakd.detection.datasets import DATASETS
from eakd.detection.distill import DetectionDistiller, check_compatible
from eakd.detection.eval import box_ap
from eakd.detection.models import build_detector
from eakd.detection.roi_log import RoILog
from eakd.distill import DistillLoss
from eakd.engine.task import register_task

if TYPE_CHECKING:
    from accelerate import Accelerator

    from eakd.engine.config import Config, DataConfig


class DetectionTask:
    """Faster R-CNN student (+ frozen teacher) on detection batches ``(images list, targets list)``.

    loss: the RoI-logit DistillLoss (None: no RoI-logit term). feature_weight > 0: the FitNet-style FPN
    term through a 1x1 adapter to the teacher's FPN width. roi_log: writes sampled per-RoI weights, IoUs and
    teacher confidences of the training steps (``eakd.detection.roi_log``). Evaluation gives COCO box ``AP``,
    ``AP50``, ``AP75`` and ``AP_small`` / ``AP_medium`` / ``AP_large`` in percent (the paper's scale; -100,
    COCO's -1, for a size without ground truth); the best epoch is picked by AP.
    """

    metric = "AP"

    def __init__(
        self,
        student: FasterRCNN,
        teacher: FasterRCNN | None,
        loss: DistillLoss | None,
        train_set: Dataset[Any],
        eval_set: Dataset[Any] | None,
        feature_weight: float = 0.0,
        roi_log: RoILog | None = None,
    ) -> None:
        if (loss is not None or feature_weight > 0) and teacher is None:
            raise ValueError("distillation needs a teacher (set model.teacher or distill.method=none)")
        width = None
        if teacher is not None:
            check_compatible(student, teacher)
            width = teacher.backbone.out_channels
        self.trainable = DetectionDistiller(student, loss, feature_weight, width)
        self.roi_log = roi_log if loss is not None else None
        self.teacher = teacher
        self.train_set = train_set
        self.eval_set = eval_set
        self.collate_fn = collate
        self.loss = loss

    def training_step(self, model: nn.Module, batch: Any, epoch: float) -> dict[str, Tensor]:
        """batch = (images [(3, H, W)], targets [{"boxes", "labels"}]): detector + distillation losses."""
        images, targets = batch
        losses = model(images, targets, self.teacher, epoch)
        if self.roi_log is not None:
            self.roi_log(epoch, self.trainable.last)
        return losses

    def diagnostics(self) -> dict[str, Tensor] | None:
        """Per-RoI weights and entropies (as the loss's policy computed them), unweighted loss and RoI label
        (0 = background) of the last step; None without a RoI loss."""
        if self.loss is None:
            return None
        last = self.trainable.last
        out = {
            k: last[k] for k in ("weights", "h_t", "h_s", "per_sample", "target") if last.get(k) is not None
        }
        return out if "weights" in out else None

    def evaluate(self, model: nn.Module, loader: Iterable[Any], accelerator: Accelerator) -> dict[str, float]:
        """COCO box AP / AP50 / AP75 / AP by size (%) of the student over the evaluation set, gathered over
        processes."""
        from accelerate.utils import gather_object

        student = model.student if isinstance(model, DetectionDistiller) else model
        preds: list[dict[str, Tensor]] = []
        gts: list[dict[str, Tensor]] = []
        for images, targets in loader:
            preds += [{k: v.cpu() for k, v in p.items()} for p in student(images)]
            gts += [{k: v.cpu() for k, v in t.items()} for t in targets]
        if accelerator.num_processes > 1:
            preds, gts = gather_object(preds), gather_object(gts)
        return {k: 100.0 * v for k, v in box_ap(preds, gts).items()}


def _subset(source: Dataset[Any], n: int | None) -> Dataset[Any]:
    return source if n is None else Subset(source, range(min(n, len(source))))  # type: ignore[arg-type]


def build_datasets(data: DataConfig) -> tuple[Dataset[Any], Dataset[Any] | None, list[str]]:
    """(train set, eval set, class names) of a detection ``data`` section.

    ``data.name`` picks a builder of ``eakd.detection.DATASETS`` (coco, voc, csv, trees or your own), which
    reads its own options. Here, for all: options size ([height, width] every image is resized to, None = as
    stored), vflip (probability, 0.0; for aerial images), jitter (colour jitter strength, 0.0), preload
    (keep decoded images in memory); data.augment switches the random left-right flips (and vflip, jitter)
    on; data.train_subset / eval_subset keep the first n items.
    """
    train, evals, names = DATASETS.get(data.name)(data)
    opt = data.options
    size, preload = opt.get("size") or None, bool(opt.get("preload", False))
    plain = detection_transform(size)
    augment = detection_transform(size, 0.5, opt.get("vflip", 0.0), opt.get("jitter", 0.0))
    train_set = DetectionDataset(
        _subset(train, data.train_subset), augment if data.augment else plain, preload
    )
    if evals is None:
        return train_set, None, names
    return train_set, DetectionDataset(_subset(evals, data.eval_subset), plain, preload), names


def load_detector_weights(model: FasterRCNN, path: str | Path) -> None:
    """Load a torchvision detector state dict, or an eakd run's weights (``{"model": ...}`` of the
    trainable ``DetectionDistiller``, keys prefixed ``student.``), into ``model``."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    state = state.get("model", state)
    if any(k.startswith("student.") for k in state):
        state = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    model.load_state_dict(state)


@register_task("detection")
def build_detection(cfg: Config) -> DetectionTask:
    """Detectors named by ``model.student`` / ``model.teacher`` (backbones), data from ``build_datasets``."""
    train_set, eval_set, names = build_datasets(cfg.data)
    num_classes = cfg.model.num_classes or len(names)
    student = build_detector(cfg.model.student, num_classes, **cfg.model.student_options)
    if cfg.model.student_checkpoint:
        load_detector_weights(student, cfg.model.student_checkpoint)
    hparams = dict(cfg.distill.hparams)
    feature_weight = float(hparams.pop("feature_weight", 0.0))
    loss = None  # the student alone (method none): the detector's own losses only
    if cfg.distill.method != "none":  # the detector's own losses stand for the cross-entropy: ce_weight 0
        distill = dataclasses.replace(cfg.distill, ce_weight=0.0, hparams=hparams)
        loss = DistillLoss.from_config(distill, sync_checks=False)  # the engine reads the loss terms
    teacher = None
    if cfg.model.teacher is not None and (loss is not None or feature_weight > 0):
        teacher = build_detector(cfg.model.teacher, num_classes, **cfg.model.teacher_options)
        if cfg.teacher_file:
            load_detector_weights(teacher, cfg.teacher_file)
    every, samples = cfg.train.diag_every, min(64, cfg.train.diag_samples)
    roi_log = RoILog(cfg.run_dir, every, samples) if every and samples else None
    return DetectionTask(student, teacher, loss, train_set, eval_set, feature_weight, roi_log)
