"""EA-KD for object detection: torchvision Faster R-CNN, RoI-logit (+ FPN feature) distillation.

    from eakd.detection import DetectionDistiller, build_detector
    student = build_detector("resnet18", num_classes=80)
    teacher = build_detector("resnet101", num_classes=80)          # trained, frozen
    distiller = DetectionDistiller(student, eakd.DistillLoss("kd", "ea", tau=4.0, temperature=1.0))
    losses = distiller(images, targets, teacher)                   # detector losses + loss_roi_kd

Importing this package registers the engine task "detection".
"""

from eakd.detection.data import DetectionDataset, Record, collate, load_coco, load_csv, load_voc, tree_records
from eakd.detection.distill import DetectionDistiller, student_forward, teacher_roi_logits
from eakd.detection.eval import box_ap, evaluate_detector
from eakd.detection.models import build_detector
from eakd.detection.task import DetectionTask, build_datasets

__all__ = [
    "DetectionDataset",
    "DetectionDistiller",
    "DetectionTask",
    "Record",
    "box_ap",
    "build_datasets",
    "build_detector",
    "collate",
    "evaluate_detector",
    "load_coco",
    "load_csv",
    "load_voc",
    "student_forward",
    "teacher_roi_logits",
    "tree_records",
]
