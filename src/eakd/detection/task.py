"""Detection as an engine task (``task: detection``): data, detectors and the RoI distiller from a config.

Config use (see docs/detection.md): ``data.name`` is "coco", "voc", "csv" or "trees"; ``model.student`` /
``model.teacher`` are backbone names with ``build_detector`` keyword arguments in ``*_options``;
``distill`` is the RoI-logit loss (``distill.ce_weight`` is ignored: the detector keeps its own losses;
``distill.hparams.feature_weight`` > 0 adds the per-image FPN feature MSE).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.models.detection import FasterRCNN

from eakd.detection.data import (
    DetectionDataset,
    Record,
    collate,
    load_coco,
    load_csv,
    load_voc,
    tile_records,
    train_augment,
    tree_records,
)
from eakd.detection.distill import DetectionDistiller, check_compatible
from eakd.detection.eval import box_ap
from eakd.detection.models import build_detector
from eakd.distill import DistillLoss
from eakd.engine.task import register_task

if TYPE_CHECKING:
    from accelerate import Accelerator

    from eakd.engine.config import Config, DataConfig


class DetectionTask:
    """Faster R-CNN student (+ frozen teacher) on detection batches ``(images list, targets list)``.

    loss: the RoI-logit DistillLoss (None with no feature term: the student alone). Evaluation gives
    COCO box ``AP``, ``AP50``, ``AP75`` in percent (the paper's scale); the best epoch is picked by AP.
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
    ) -> None:
        if (loss is not None or feature_weight > 0) and teacher is None:
            raise ValueError("distillation needs a teacher (set model.teacher or distill.method=none)")
        if teacher is not None:
            check_compatible(student, teacher)
        self.trainable = DetectionDistiller(student, loss, feature_weight)
        self.teacher = teacher
        self.train_set = train_set
        self.eval_set = eval_set
        self.collate_fn = collate
        self.loss = loss

    def training_step(self, model: nn.Module, batch: Any, epoch: float) -> dict[str, Tensor]:
        """batch = (images [(3, H, W)], targets [{"boxes", "labels"}]): detector + distillation losses."""
        images, targets = batch
        return model(images, targets, self.teacher, epoch)

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
        """COCO box AP / AP50 / AP75 (%) of the student over the evaluation set, gathered over processes."""
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


def _subset(records: list[Record], n: int | None) -> list[Record]:
    return records if n is None else records[:n]


def build_datasets(data: DataConfig) -> tuple[Dataset[Any], Dataset[Any] | None, list[str]]:
    """(train set, eval set, class names) of a detection ``data`` section.

    name "coco": options train_ann, train_images, eval_ann, eval_images (paths relative to data.root).
    name "voc": root/Annotations/<id>.xml and root/JPEGImages, ids from root/ImageSets/Main/<split>.txt,
    options train_split ("train"), eval_split ("val"), classes (list; None = in order of appearance).
    name "csv": options train_csv, eval_csv, image_root (default: each CSV's folder), classes.
    name "trees": the deepforest tree images (root: its data folder, None = the PyPI package); options
    tile (400 px), overlap (0.0), min_visible (0.5).
    All: options size ([height, width] every image is resized to, None = as stored), vflip (probability,
    0.0; for aerial images), jitter (colour jitter strength, 0.0), preload (keep decoded images in
    memory). data.augment: switches the random left-right flips (and vflip, jitter) on.
    """
    opt = dict(data.options)
    root = Path(data.root) if data.root else Path(".")
    classes: list[str] | None = opt.get("classes")
    if data.name == "coco":
        train, names = load_coco(root / opt["train_ann"], root / opt["train_images"])
        evals = load_coco(root / opt["eval_ann"], root / opt["eval_images"])[0] if "eval_ann" in opt else None
    elif data.name == "voc":

        def split(name: str) -> list[Path]:
            ids = (root / "ImageSets" / "Main" / f"{name}.txt").read_text().split()
            return [root / "Annotations" / f"{i}.xml" for i in ids]

        train, names = load_voc(split(opt.get("train_split", "train")), root / "JPEGImages", classes)
        evals = load_voc(split(opt.get("eval_split", "val")), root / "JPEGImages", names)[0]
    elif data.name == "csv":
        image_root = opt.get("image_root")
        train, names = load_csv(root / opt["train_csv"], image_root, classes)
        evals = load_csv(root / opt["eval_csv"], image_root, names)[0] if "eval_csv" in opt else None
    elif data.name == "trees":
        big, evals = tree_records(data.root)
        train = tile_records(big, opt.get("tile", 400), opt.get("overlap", 0.0), opt.get("min_visible", 0.5))
        names = ["Tree"]
    else:
        raise ValueError(f"unknown detection data set {data.name!r}; known: coco, voc, csv, trees")
    size = tuple(opt["size"]) if opt.get("size") else None
    augment = train_augment(0.5, opt.get("vflip", 0.0), opt.get("jitter", 0.0)) if data.augment else None
    preload = bool(opt.get("preload", False))
    train_set = DetectionDataset(_subset(train, data.train_subset), size, augment, preload)
    eval_set = (
        None if evals is None else DetectionDataset(_subset(evals, data.eval_subset), size, None, preload)
    )
    return train_set, eval_set, names


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
    loss = DistillLoss.from_config(dataclasses.replace(cfg.distill, ce_weight=0.0, hparams=hparams))
    teacher = None
    if cfg.model.teacher is not None and (loss is not None or feature_weight > 0):
        teacher = build_detector(cfg.model.teacher, num_classes, **cfg.model.teacher_options)
        if cfg.model.teacher_checkpoint:
            load_detector_weights(teacher, cfg.model.teacher_checkpoint)
    return DetectionTask(student, teacher, loss, train_set, eval_set, feature_weight)
