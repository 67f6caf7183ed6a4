"""Detection data: COCO json, VOC XML and CSV boxes, the deepforest tree images, box-moving transforms.

A sample is ``(image, target)``: image float32 (3, H, W) in [0, 1]; target ``{"boxes": (M, 4) float32
xyxy in pixels, "labels": (M,) int64 in 1..C}`` (0 is the detectors' background). Boxes that are
degenerate, non-finite or outside the image are dropped (partly outside ones are clipped) and counted;
the counts are logged once per loaded dataset instead of failing mid-epoch.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import random
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

Target = dict[str, torch.Tensor]
Sample = tuple[torch.Tensor, Target]
Transform = Callable[[torch.Tensor, Target], Sample]

TREE_TRAIN = ("2019_YELL_2_541000_4977000_image_crop", "2019_YELL_2_528000_4978000_image_crop2")
TREE_TEST = ("OSBS_029", "SOAP_061")


@dataclass
class Record:
    """One image with its boxes: ``boxes`` (M, 4) float32 xyxy pixels, ``labels`` (M,) int64 in 1..C.

    ``window`` (x0, y0, x1, y1) in pixels selects a crop (a tile) of the image; None = the whole image.
    """

    image: Path
    boxes: torch.Tensor
    labels: torch.Tensor
    window: tuple[int, int, int, int] | None = None


@dataclass
class DropCounts:
    """How many boxes a loader dropped or clipped, by reason."""

    counts: Counter[str] = field(default_factory=Counter)

    def report(self, source: str) -> None:
        """Log one warning summarising the drops of ``source`` (nothing if none)."""
        if any(v for k, v in self.counts.items() if k != "clipped"):
            detail = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()) if v)
            log.warning("%s: boxes dropped or changed: %s", source, detail)


def sanitize_boxes(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    width: float,
    height: float,
    drops: DropCounts | None = None,
    min_size: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip xyxy boxes (M, 4) to the image and drop non-finite, outside or degenerate ones.

    A box is kept when, after clipping to [0, width] x [0, height], both sides are >= ``min_size`` pixels.
    Returns (boxes (K, 4) float32, labels (K,) int64); reasons are added to ``drops``.
    """
    boxes = boxes.reshape(-1, 4).float()
    labels = labels.reshape(-1).long()
    finite = torch.isfinite(boxes).all(dim=1)
    inverted = finite & ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    outside = (
        finite
        & ~inverted
        & ((boxes[:, 0] >= width) | (boxes[:, 1] >= height) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0))
    )
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
    ok = finite & ~inverted & ~outside
    changed = ok & (clipped != boxes).any(dim=1)
    small = ok & ((clipped[:, 2] - clipped[:, 0] < min_size) | (clipped[:, 3] - clipped[:, 1] < min_size))
    keep = ok & ~small
    if drops is not None:
        drops.counts.update(
            {
                "non-finite": int((~finite).sum()),
                "inverted (max < min)": int(inverted.sum()),
                "outside the image": int(outside.sum()),
                f"smaller than {min_size:g} px": int(small.sum()),
                "clipped": int((changed & keep).sum()),
            }
        )
    return clipped[keep], labels[keep]


def _class_index(name: str, classes: list[str], fixed: bool, drops: DropCounts) -> int:
    """1-based label of ``name``; unknown names are added unless the class list is fixed (then 0)."""
    if name not in classes:
        if fixed:
            drops.counts["unknown class"] += 1
            return 0
        classes.append(name)
    return classes.index(name) + 1


def _record(
    image: Path, boxes: list[list[float]], labels: list[int], size: tuple[float, float], drops: DropCounts
) -> Record:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    lab = torch.tensor(labels, dtype=torch.int64)
    known = lab > 0
    b, lab = sanitize_boxes(b[known], lab[known], size[0], size[1], drops)
    return Record(image, b, lab)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    with Image.open(path) as im:
        return im.size


def load_coco(ann_file: str | Path, image_root: str | Path) -> tuple[list[Record], list[str]]:
    """Records and class names of a COCO-format annotation file.

    Category ids map to contiguous labels 1..C in increasing id order; ``bbox`` [x, y, w, h] becomes
    xyxy; crowd annotations (iscrowd=1) are skipped; images without annotations are kept (empty);
    images missing on disk are skipped (counted in the warning), so they cannot fail an epoch.
    """
    data = json.loads(Path(ann_file).read_text())
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    label_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
    per_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    drops = DropCounts()
    for ann in data.get("annotations", []):
        if ann.get("iscrowd", 0):
            drops.counts["crowd"] += 1
        elif ann["image_id"] not in per_image:
            drops.counts["unknown image id"] += 1
        elif ann["category_id"] not in label_of:
            drops.counts["unknown category id"] += 1
        else:
            per_image[ann["image_id"]].append(ann)
    records = []
    for img in data["images"]:
        if not (Path(image_root) / img["file_name"]).is_file():
            drops.counts["images missing on disk (skipped)"] += 1
            continue
        anns = per_image[img["id"]]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        labels = [label_of[a["category_id"]] for a in anns]
        size = (img["width"], img["height"])
        records.append(_record(Path(image_root) / img["file_name"], boxes, labels, size, drops))
    drops.report(str(ann_file))
    return records, [c["name"] for c in cats]


def load_voc(
    xml_files: Sequence[str | Path], image_root: str | Path, classes: list[str] | None = None
) -> tuple[list[Record], list[str]]:
    """Records and class names of Pascal VOC XML files (one per image).

    ``classes`` fixes the class list (objects of other classes are dropped and counted); None builds it
    in order of appearance. The image file is ``image_root / <filename>``; when that file is missing,
    a file of the same stem with another extension is used (deepforest lists .tif but ships .png).
    """
    names = list(classes or [])
    drops = DropCounts()
    records = []
    for xml_file in xml_files:
        root = ET.parse(xml_file).getroot()
        path = _existing(Path(image_root) / root.findtext("filename", ""))
        size = root.find("size")
        if size is not None and size.findtext("width"):
            wh = (float(size.findtext("width", "0")), float(size.findtext("height", "0")))
        else:
            wh = image_size(path)
        boxes, labels = [], []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            if bb is None:
                drops.counts["no bndbox"] += 1
                continue
            boxes.append([float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(_class_index(obj.findtext("name", "").strip(), names, classes is not None, drops))
        records.append(_record(path, boxes, labels, wh, drops))
    drops.report(f"{len(records)} VOC files")
    return records, names


def load_csv(
    csv_file: str | Path, image_root: str | Path | None = None, classes: list[str] | None = None
) -> tuple[list[Record], list[str]]:
    """Records of a CSV with columns image_path,xmin,ymin,xmax,ymax,label (one row per box).

    Image paths are relative to ``image_root`` (default: the CSV's folder). A row with empty box fields
    lists an image without boxes. Image sizes are read from the files' headers.
    """
    root = Path(image_root) if image_root is not None else Path(csv_file).parent
    names = list(classes or [])
    drops = DropCounts()
    rows: dict[str, tuple[list[list[float]], list[int]]] = {}
    with open(csv_file, newline="") as f:
        for row in csv.DictReader(f):
            boxes, labels = rows.setdefault(row["image_path"], ([], []))
            coords = [row.get(k, "") or "" for k in ("xmin", "ymin", "xmax", "ymax")]
            if not any(c.strip() for c in coords):
                continue
            boxes.append([float(c) if c.strip() else math.nan for c in coords])
            labels.append(_class_index(row["label"].strip(), names, classes is not None, drops))
    records = []
    for name, (boxes, labels) in rows.items():
        path = _existing(root / name)
        records.append(_record(path, boxes, labels, image_size(path), drops))
    drops.report(str(csv_file))
    return records, names


def _existing(path: Path) -> Path:
    if path.exists():
        return path
    for ext in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        if path.with_suffix(ext).exists():
            return path.with_suffix(ext)
    raise FileNotFoundError(f"image {path} not found (nor with another image extension)")


@functools.lru_cache(maxsize=2)
def _decode(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def read_image(path: Path, window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """uint8 (3, H, W) RGB image, cropped to ``window`` (x0, y0, x1, y1) when given.

    The last two decoded images are cached, so consecutive tiles of one large image decode it once.
    """
    image = _decode(path)
    if window is not None:
        x0, y0, x1, y1 = window
        image = image[:, y0:y1, x0:x1]
    return image.clone()


# ----- transforms: (image (3, H, W), target) -> (image, target), boxes moved with the pixels -----


def hflip(image: torch.Tensor, target: Target) -> Sample:
    """Mirror left-right; box x -> W - x."""
    w = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


def vflip(image: torch.Tensor, target: Target) -> Sample:
    """Mirror top-bottom; box y -> H - y."""
    h = image.shape[-2]
    boxes = target["boxes"].clone()
    boxes[:, [1, 3]] = h - target["boxes"][:, [3, 1]]
    return image.flip(-2), {**target, "boxes": boxes}


def resize(image: torch.Tensor, target: Target, size: tuple[int, int]) -> Sample:
    """Resize to ``size`` (height, width) pixels (bilinear); boxes scaled per axis."""
    h, w = image.shape[-2:]
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    if image.dtype == torch.uint8:
        out = out.round().clamp(0, 255).to(torch.uint8)
    scale = torch.tensor([size[1] / w, size[0] / h, size[1] / w, size[0] / h])
    return out[0], {**target, "boxes": target["boxes"] * scale}


def crop_boxes(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    window: tuple[int, int, int, int],
    min_visible: float = 0.5,
    drops: DropCounts | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (M, 4) of an image seen through ``window`` (x0, y0, x1, y1): shifted, clipped to the window,
    and dropped (counted as "cut by a tile edge") when less than ``min_visible`` of their area remains."""
    x0, y0, x1, y1 = window
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inner = shifted.clone()
    inner[:, 0::2] = inner[:, 0::2].clamp(0, x1 - x0)
    inner[:, 1::2] = inner[:, 1::2].clamp(0, y1 - y0)
    visible = (inner[:, 2] - inner[:, 0]).clamp_min(0) * (inner[:, 3] - inner[:, 1]).clamp_min(0)
    seen = visible > 0
    keep = seen & (visible >= min_visible * area)
    if drops is not None:
        drops.counts["cut by a tile edge"] += int((seen & ~keep).sum())
    return sanitize_boxes(inner[keep], labels[keep], x1 - x0, y1 - y0, drops)


def tile_windows(width: int, height: int, tile: int, overlap: float = 0.0) -> list[tuple[int, int, int, int]]:
    """Windows (x0, y0, x1, y1) of side ``tile`` covering a width x height image with the given overlap
    fraction; the last row/column is shifted inwards so every window lies inside the image."""

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        step = max(1, int(tile * (1 - overlap)))
        s = list(range(0, n - tile + 1, step))
        return s if s[-1] == n - tile else [*s, n - tile]

    return [
        (x, y, x + min(tile, width), y + min(tile, height)) for y in starts(height) for x in starts(width)
    ]


def tile_records(
    records: Sequence[Record], tile: int, overlap: float = 0.0, min_visible: float = 0.5
) -> list[Record]:
    """Split every record into square tiles (see ``tile_windows``/``crop_boxes``); empty tiles are kept."""
    drops = DropCounts()
    out = []
    for rec in records:
        w, h = image_size(rec.image)
        for win in tile_windows(w, h, tile, overlap):
            boxes, labels = crop_boxes(rec.boxes, rec.labels, win, min_visible, drops)
            out.append(Record(rec.image, boxes, labels, win))
    drops.report(f"tiling {len(records)} image(s) into {len(out)} tiles of {tile} px")
    return out


def color_jitter(image: torch.Tensor, strength: float) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in [1 - strength, 1 + strength]; boxes unchanged.

    image: uint8 (3, H, W) -> uint8 (3, H, W).
    """
    x = image.float()
    b, c, s = (1.0 + strength * (2.0 * random.random() - 1.0) for _ in range(3))
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    x = (x - gray) * s + gray
    return x.round().clamp(0, 255).to(torch.uint8)


def train_augment(hflip_p: float = 0.5, vflip_p: float = 0.0, jitter: float = 0.0) -> Transform:
    """Random left-right / top-bottom flips with their probabilities, and ``color_jitter(jitter)``."""

    def apply(image: torch.Tensor, target: Target) -> Sample:
        if random.random() < hflip_p:
            image, target = hflip(image, target)
        if random.random() < vflip_p:
            image, target = vflip(image, target)
        if jitter > 0:
            image = color_jitter(image, jitter)
        return image, target

    return apply


class DetectionDataset(torch.utils.data.Dataset[Sample]):
    """Samples of ``records``: float32 images in [0, 1] and their targets.

    size: (height, width) every image (or tile) is resized to, None = as stored. transform: applied after
    the resize (e.g. ``train_augment()``). preload: decode all images once and keep them (uint8) in memory.
    """

    def __init__(
        self,
        records: Sequence[Record],
        size: tuple[int, int] | None = None,
        transform: Transform | None = None,
        preload: bool = False,
    ) -> None:
        self.records = list(records)
        self.size = size
        self.transform = transform
        self.cache = [self._load(i) for i in range(len(self.records))] if preload else None

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, i: int) -> Sample:
        rec = self.records[i]
        image = read_image(rec.image, rec.window)
        target = {"boxes": rec.boxes.clone(), "labels": rec.labels.clone()}
        if self.size is not None and tuple(image.shape[-2:]) != tuple(self.size):
            image, target = resize(image, target, self.size)
        return image, target

    def __getitem__(self, i: int) -> Sample:
        image, target = self.cache[i] if self.cache is not None else self._load(i)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image.float() / 255.0, target


def collate(batch: list[Sample]) -> tuple[list[torch.Tensor], list[Target]]:
    """Detection batches are lists (images may differ in size)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def tree_records(data_dir: str | Path | None = None) -> tuple[list[Record], list[Record]]:
    """The deepforest NEON tree images as one class "Tree": (the two large crops, the two 400x400 images).

    data_dir: deepforest's ``data`` folder; None = the installed PyPI package ``deepforest`` (fetched with
    ``eakd fetch deepforest``), found without importing it.
    """
    if data_dir is None:
        from eakd.fetch import fetch

        data_dir = fetch("deepforest") / "data"
    root = Path(data_dir)
    train, _ = load_voc([root / f"{n}.xml" for n in TREE_TRAIN], root)
    test, _ = load_voc([root / f"{n}.xml" for n in TREE_TEST], root)
    for rec in train + test:  # SOAP_061 labels its trees "Alive"/"Dead": one class here
        rec.labels = torch.ones_like(rec.labels)
    return train, test
