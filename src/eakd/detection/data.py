"""Detection data through torchvision: COCO and VOC readers, our CSV reader, box-aware v2 transforms.

A *source* item is ``(image, {"boxes": (M, 4) xyxy pixels, "labels": (M,) int64 in 1..C})`` with the image
a PIL image or a uint8 (3, H, W) tensor (0 is the detectors' background). ``DetectionDataset`` turns a
source into what the detector trains on: image float32 (3, H, W) in [0, 1], target ``{"boxes": (M, 4)
float32 xyxy pixels, "labels": (M,) int64}``, after a ``torchvision.transforms.v2`` pipeline that moves
the boxes with the pixels, clips them to the image and drops degenerate ones (``detection_transform``).
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, VisionDataset, VOCDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2

log = logging.getLogger(__name__)

Target = dict[str, torch.Tensor]
Sample = tuple[torch.Tensor, Target]


def detection_transform(
    size: Sequence[int] | None = None, hflip: float = 0.0, vflip: float = 0.0, jitter: float = 0.0
) -> v2.Transform:
    """Resize to ``size`` (height, width) pixels (bilinear, antialiased; None = as stored), random flips
    with probabilities ``hflip`` / ``vflip``, colour jitter of brightness, contrast and saturation factors in
    [1 - jitter, 1 + jitter]; then boxes clipped to the image, boxes under 1 px dropped, image to [0, 1]."""
    steps: list[v2.Transform] = []
    if size is not None:
        steps.append(v2.Resize(list(size), antialias=True))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if vflip > 0:
        steps.append(v2.RandomVerticalFlip(vflip))
    if jitter > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    steps += [
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=1.0),
        v2.ToDtype(torch.float32, scale=True),
    ]
    return v2.Compose(steps)


def to_tv(image: Any, target: Mapping[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
    """A source item as torchvision tensors: uint8 Image (3, H, W), BoundingBoxes (M, 4) float32 xyxy on
    that image, labels (M,) int64 (other target keys are left out)."""
    image = v2.functional.to_image(image)
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).as_subclass(torch.Tensor).reshape(-1, 4)
    bbox = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))
    return image, {"boxes": bbox, "labels": torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1)}


class DetectionDataset(Dataset[Sample]):
    """The items of ``source`` through ``transform`` (default ``detection_transform()``: clip, sanitise,
    scale): image float32 (3, H, W) in [0, 1], target {"boxes": (M, 4) float32 xyxy, "labels": (M,) int64}.

    preload: read (decode) every source item once and keep it in memory as uint8.
    """

    def __init__(
        self, source: Dataset[Any], transform: v2.Transform | None = None, preload: bool = False
    ) -> None:
        self.source = source
        self.transform = transform if transform is not None else detection_transform()
        n = len(source)  # type: ignore[arg-type]
        self.cache = [to_tv(*source[i]) for i in range(n)] if preload else None

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Sample:
        image, target = self.cache[i] if self.cache is not None else to_tv(*self.source[i])
        image, target = self.transform(image, target)
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor),
            "labels": target["labels"],
        }


def collate(batch: list[Sample]) -> tuple[list[torch.Tensor], list[Target]]:
    """Detection batches are lists (images may differ in size)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


# ----- COCO: torchvision's CocoDetection -----


def _coco_target(image: Any, target: dict[str, Any], labels: Mapping[int, int]) -> tuple[Any, Target]:
    """The v2-wrapped COCO target with category ids -> labels 1..C and crowd boxes left out."""
    if "boxes" not in target:  # an image without annotations
        return image, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    label = torch.tensor([labels.get(int(c), 0) for c in target["labels"]], dtype=torch.int64)
    keep = (label > 0) & ~torch.tensor(target["iscrowd"], dtype=torch.bool)
    return image, {"boxes": target["boxes"][keep], "labels": label[keep]}


def coco(image_root: str | Path, ann_file: str | Path) -> tuple[Dataset[Any], list[str]]:
    """A COCO-format annotation file as a source, and its class names.

    Category ids map to labels 1..C in increasing id order; ``bbox`` [x, y, w, h] becomes xyxy (torchvision's
    v2 wrapper); crowd annotations are left out; images without annotations are kept (no boxes); images
    missing on disk are left out (counted in a warning), so they cannot fail an epoch.
    """
    ds = CocoDetection(str(image_root), str(ann_file))
    ids = [i for i in ds.ids if (Path(image_root) / ds.coco.imgs[i]["file_name"]).is_file()]
    missing, ds.ids = len(ds.ids) - len(ids), ids
    for ann in ds.coco.anns.values():  # the v2 wrapper needs the key on every annotation
        ann.setdefault("iscrowd", 0)
    crowd = sum(1 for a in ds.coco.anns.values() if a["iscrowd"])
    if missing or crowd:
        log.warning(
            "%s: %d images missing on disk (left out), %d crowd boxes (left out)", ann_file, missing, crowd
        )
    cats = sorted(ds.coco.cats)
    ds.transforms = functools.partial(_coco_target, labels={c: i + 1 for i, c in enumerate(cats)})
    wrapped = wrap_dataset_for_transforms_v2(ds, target_keys={"boxes", "labels", "iscrowd"})
    return wrapped, [ds.coco.cats[c]["name"] for c in cats]


# ----- VOC: torchvision's VOCDetection over any file layout -----


class VOCFiles(VOCDetection):
    """torchvision's VOCDetection (its image loading and XML parsing) over given image / XML file pairs
    instead of ``VOCdevkit/VOC<year>``; items ``(PIL image, {"boxes": (M, 4) xyxy, "labels": (M,)})``.

    classes: object name -> label (1..C); objects of other names are left out. Coordinates are used as the
    XML states them (VOC's 1-based pixels included).
    """

    def __init__(
        self, images: Sequence[str | Path], annotations: Sequence[str | Path], classes: Mapping[str, int]
    ) -> None:
        VisionDataset.__init__(self)  # not VOCDetection.__init__: it builds the VOCdevkit/VOC<year> paths
        self.images = [str(p) for p in images]
        self.targets = [str(p) for p in annotations]
        self.classes = dict(classes)

    @classmethod
    def folder(
        cls, root: str | Path, split: str, classes: Sequence[str] | None = None, image_ext: str = ".jpg"
    ) -> VOCFiles:
        """``root/Annotations/<id>.xml`` and ``root/JPEGImages/<id><image_ext>``, ids from
        ``root/ImageSets/Main/<split>.txt``. ``classes[k]`` gets label k + 1; None: the object names in
        order of first appearance (``list(ds.classes)`` gives them back)."""
        root = Path(root)
        ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        images = [root / "JPEGImages" / f"{i}{image_ext}" for i in ids]
        ds = cls(images, [root / "Annotations" / f"{i}.xml" for i in ids], {})
        names = classes if classes is not None else ds.names()
        ds.classes = {name: k + 1 for k, name in enumerate(names)}
        return ds

    def names(self) -> list[str]:
        """Object names in order of first appearance over all XML files."""
        parsed = (self.parse_voc_xml(ET.parse(xml).getroot()) for xml in self.targets)
        return list(dict.fromkeys(obj["name"] for p in parsed for obj in p["annotation"]["object"]))

    def __getitem__(self, index: int) -> tuple[Image.Image, Target]:
        image, target = super().__getitem__(index)
        objects = [o for o in target["annotation"]["object"] if o["name"] in self.classes]
        boxes = [[float(o["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")] for o in objects]
        labels = [self.classes[o["name"]] for o in objects]
        return image, {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }


# ----- CSV: image_path,xmin,ymin,xmax,ymax,label -----


class CsvBoxes(Dataset[tuple[Image.Image, Target]]):
    """A CSV with columns image_path,xmin,ymin,xmax,ymax,label, one row per box, as a source.

    Image paths are relative to ``image_root`` (default: the CSV's folder). A row with empty box fields
    lists an image without boxes. classes: fixed class list (rows of other labels are left out); None builds
    it in order of appearance (``self.classes``; label k + 1 is ``classes[k]``).
    """

    def __init__(
        self, csv_file: str | Path, image_root: str | Path | None = None, classes: Sequence[str] | None = None
    ) -> None:
        self.root = Path(image_root) if image_root is not None else Path(csv_file).parent
        self.classes = list(classes or [])
        rows: dict[str, tuple[list[list[float]], list[int]]] = {}
        with open(csv_file, newline="") as f:
            for row in csv.DictReader(f):
                boxes, labels = rows.setdefault(row["image_path"], ([], []))
                coords = [(row.get(k) or "").strip() for k in ("xmin", "ymin", "xmax", "ymax")]
                name = (row.get("label") or "").strip()
                if not any(coords) or (classes is not None and name not in self.classes):
                    continue
                if name not in self.classes:
                    self.classes.append(name)
                boxes.append([float(c) if c else math.nan for c in coords])
                labels.append(self.classes.index(name) + 1)
        self.items = list(rows.items())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Image.Image, Target]:
        name, (boxes, labels) = self.items[i]
        image = Image.open(self.root / name).convert("RGB")
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return image, {"boxes": b, "labels": torch.tensor(labels, dtype=torch.int64)}
