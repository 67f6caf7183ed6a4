"""EA-KD for object detection: torchvision Faster R-CNN, RoI-logit (+ FPN feature) distillation.

    from eakd.detection import DetectionDistiller, build_detector
    student = build_detector("resnet18", num_classes=80)
    teacher = build_detector("resnet101", num_classes=80)          # trained, frozen
    distiller = DetectionDistiller(student, eakd.DistillLoss("kd", "ea", tau=4.0, temperature=1.0))
    losses = distiller(images, targets, teacher)                   # detector losses + loss_roi_kd

Data sets a config can name are in ``DATASETS`` (coco, voc, csv, trees; register your own).
Importing this package registers the engine task "detection".
"""

from eakd.detection.data import CsvBoxes, DetectionDataset, VOCFiles, coco, collate, detection_transform
from eakd.detection.datasets import DATASETS, DetectionData
from eakd.detection.distill import DetectionDistiller, student_forward, teacher_roi_logits
from eakd.detection.eval import box_ap, evaluate_detector
from eakd.detection.models import build_detector
from eakd.detection.task import DetectionTask, build_datasets
from eakd.detection.trees import Tiles, tree_sets

__all__ = [
    "DATASETS",
    "CsvBoxes",
    "DetectionData",
    "DetectionDataset",
    "DetectionDistiller",
    "DetectionTask",
    "Tiles",
    "VOCFiles",
    "box_ap",
    "build_datasets",
    "build_detector",
    "coco",
    "collate",
    "detection_transform",
    "evaluate_detector",
    "student_forward",
    "teacher_roi_logits",
    "tree_sets",
]
