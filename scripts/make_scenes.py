"""Multi-class detection scenes composed from real Fashion-MNIST items, written as COCO json + PNG images.

    python scripts/make_scenes.py [--out DIR] [--seed 0] [--sizes 2000 300 300] [--canvas 128]

Each scene is a ``canvas`` x ``canvas`` RGB image: a dark noisy background, 2-6 Fashion-MNIST items (10
classes) scaled to 20-60 px and tinted, placed with limited overlap (an item may cover up to a third of
an earlier one's box, painted on top), and 1-3 unlabelled distractors (partial crops of other items, dimmer).
Boxes are the tight boxes of each item's visible pixels. Train items come from Fashion-MNIST's first
50,000 training images, val items from its last 10,000, test items from its test images: no item is in
two splits.

Writes ``DIR/annotations/{train,val,test}.json`` (COCO: ``bbox`` [x, y, w, h] pixels, category ids 1..10
named as Fashion-MNIST's classes) and ``DIR/{train,val,test}/NNNNNN.png``. Every image depends only on
(seed, split, index), so the same arguments give byte-identical files. Default DIR:
``$EAKD_CACHE/data/fmnist_scenes``; Fashion-MNIST is read from ``$EAKD_CACHE/data/FashionMNIST/raw``
(``python scripts/fetch.py fashion-mnist``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets import FashionMNIST

from eakd.paths import cache_dir

SPLITS = ("train", "val", "test")
SPLIT_INDEX = {name: k for k, name in enumerate(SPLITS)}
# split -> (Fashion-MNIST's training set?, the item indices it draws from): no item is in two splits
POOLS = {"train": (True, slice(0, 50_000)), "val": (True, slice(50_000, None)), "test": (False, slice(None))}
ITEMS = (2, 6)  # items per scene, inclusive
SCALE = (20, 60)  # item side in pixels, inclusive
DISTRACTORS = (1, 3)
MAX_COVER = 1 / 3  # largest fraction of an earlier item's box a new item may cover
VISIBLE = 48  # pixel value (0..255) above which an item pixel counts as visible for its box


def _resize(item: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a float (H, W) array to (h, w), pixel centres aligned."""
    ys = np.clip((np.arange(h) + 0.5) * item.shape[0] / h - 0.5, 0, item.shape[0] - 1)
    xs = np.clip((np.arange(w) + 0.5) * item.shape[1] / w - 0.5, 0, item.shape[1] - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, item.shape[0] - 1), np.minimum(x0 + 1, item.shape[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = item[y0][:, x0] * (1 - fx) + item[y0][:, x1] * fx
    bottom = item[y1][:, x0] * (1 - fx) + item[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _cover(box: tuple[int, int, int, int], other: tuple[int, int, int, int]) -> float:
    """Fraction of ``other``'s area (xyxy) that ``box`` covers."""
    w = min(box[2], other[2]) - max(box[0], other[0])
    h = min(box[3], other[3]) - max(box[1], other[1])
    return max(w, 0) * max(h, 0) / ((other[2] - other[0]) * (other[3] - other[1]))


def make_scene(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, canvas: int
) -> tuple[np.ndarray, list[tuple[list[float], int]]]:
    """One scene from the item pool ``images`` (N, 28, 28) uint8 with ``labels`` (N,) in 0..9.

    Returns (uint8 (canvas, canvas, 3) image, [(bbox [x, y, w, h] pixels, label 0..9)]).
    """
    base = rng.uniform(0, 50)
    scene = np.clip(base + rng.normal(0, 12, (canvas, canvas, 3)), 0, 255)
    for _ in range(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1)):  # dim partial crops, no label
        item = images[rng.integers(len(images))].astype(np.float64)
        h, w = rng.integers(8, 18, size=2)
        y, x = rng.integers(0, 28 - h), rng.integers(0, 28 - w)
        side = rng.integers(12, 36, size=2)
        part = _resize(item[y : y + h, x : x + w], side[0], side[1]) * rng.uniform(0.3, 0.6)
        py, px = rng.integers(0, canvas - side[0]), rng.integers(0, canvas - side[1])
        region = scene[py : py + side[0], px : px + side[1]]
        np.maximum(region, part[..., None], out=region)
    placed: list[tuple[int, int, int, int]] = []
    objects: list[tuple[list[float], int]] = []
    for _ in range(rng.integers(ITEMS[0], ITEMS[1] + 1)):
        k = rng.integers(len(images))
        side = int(rng.integers(SCALE[0], SCALE[1] + 1))
        item = _resize(images[k].astype(np.float64), side, side)
        ys, xs = np.nonzero(item > VISIBLE)
        if len(ys) == 0:
            continue
        tight = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # within the item, xyxy
        for _try in range(20):
            x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
            box = (x + tight[0], y + tight[1], x + tight[2], y + tight[3])
            if all(_cover(box, p) <= MAX_COVER for p in placed):
                break
        else:
            continue
        tint = rng.uniform(0.55, 1.0, size=3)
        alpha = np.clip(item / 255.0 * 3, 0, 1)[..., None]  # opaque where the item is
        region = scene[y : y + side, x : x + side]
        region[:] = region * (1 - alpha) + item[..., None] * tint * alpha
        placed.append(box)
        objects.append(([float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                        int(labels[k])))  # fmt: skip
    return np.clip(scene, 0, 255).round().astype(np.uint8), objects


def write_split(
    out: Path, split: str, n: int, seed: int, images: np.ndarray, labels: np.ndarray,
    classes: list[str], canvas: int,
) -> dict[str, Any]:  # fmt: skip
    """Write ``n`` scenes of ``split`` as ``out/split/NNNNNN.png`` and ``out/annotations/split.json``."""
    from PIL import Image

    (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": c + 1, "name": name} for c, name in enumerate(classes)],
    }
    for i in range(n):
        rng = np.random.default_rng([seed, SPLIT_INDEX[split], i])
        pixels, objects = make_scene(rng, images, labels, canvas)
        name = f"{i:06d}.png"
        Image.fromarray(pixels).save(out / split / name)
        coco["images"].append({"id": i + 1, "file_name": name, "width": canvas, "height": canvas})
        for bbox, label in objects:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": label + 1,
                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
            })  # fmt: skip
    (out / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return coco


def make_scenes(
    out: Path, sizes: tuple[int, int, int] = (2000, 300, 300), seed: int = 0, canvas: int = 128,
    fmnist_root: Path | None = None,
) -> dict[str, int]:  # fmt: skip
    """All three splits; returns split -> number of boxes. fmnist_root: the folder holding
    ``FashionMNIST/raw`` (default ``$EAKD_CACHE/data``)."""
    root = fmnist_root if fmnist_root is not None else cache_dir("data", create=False)
    boxes = {}
    for split, n in zip(SPLITS, sizes, strict=True):
        train, pool = POOLS[split]
        source = FashionMNIST(str(root), train=train, download=False)
        images, labels = source.data.numpy()[pool], source.targets.numpy()[pool]
        coco = write_split(out, split, n, seed, images, labels, list(source.classes), canvas)
        boxes[split] = len(coco["annotations"])
    return boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default $EAKD_CACHE/data/fmnist_scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sizes", type=int, nargs=3, default=[2000, 300, 300], metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--canvas", type=int, default=128, help="image side in pixels (128)")
    args = parser.parse_args()
    out = args.out if args.out is not None else cache_dir("data", "fmnist_scenes", create=False)
    boxes = make_scenes(out, tuple(args.sizes), args.seed, args.canvas)
    print(f"fmnist-scenes: {out} ({', '.join(f'{s} {n} boxes' for s, n in boxes.items())})", flush=True)


if __name__ == "__main__":
    main()
