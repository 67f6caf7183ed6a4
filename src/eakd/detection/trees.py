"""The deepforest NEON tree images (one class "Tree") and the tiling of large images into square tiles.

The images ship in the PyPI package ``deepforest`` (``make fetch`` installs it); its ``data`` folder is
found without importing the package. Training uses tiles of the two large crops; evaluation the two
400x400 images of other sites (split "out_of_site", the data notes' split), or every k-th tile of the same
crops with the training tiles that share pixels with one left out (split "in_site").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from eakd.detection.data import Target, VOCFiles, to_tv
from eakd.paths import package_dir

log = logging.getLogger(__name__)

TREE_TRAIN = ("2019_YELL_2_541000_4977000_image_crop", "2019_YELL_2_528000_4978000_image_crop2")
TREE_TEST = ("OSBS_029", "SOAP_061")
ONE_CLASS = {"Tree": 1, "Alive": 1, "Dead": 1}  # SOAP_061 labels its trees "Alive"/"Dead": one class here

Window = tuple[int, int, int, int]


def deepforest_data() -> Path:
    """deepforest's ``data`` folder (FileNotFoundError naming the package and ``make fetch`` if missing)."""
    return package_dir("deepforest", "deepforest") / "data"


def tile_windows(width: int, height: int, tile: int, overlap: float = 0.0) -> list[Window]:
    """Windows (x0, y0, x1, y1) of side ``tile`` pixels covering a width x height image with the given
    overlap fraction; the last row/column is shifted inwards so every window lies inside the image."""

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        step = max(1, int(tile * (1 - overlap)))
        s = list(range(0, n - tile + 1, step))
        return s if s[-1] == n - tile else [*s, n - tile]

    return [
        (x, y, x + min(tile, width), y + min(tile, height)) for y in starts(height) for x in starts(width)
    ]


def crop_boxes(
    boxes: torch.Tensor, labels: torch.Tensor, window: Window, min_visible: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Boxes (M, 4) xyxy of an image seen through ``window`` (x0, y0, x1, y1): shifted, clipped to the window,
    and dropped when less than ``min_visible`` of their area remains inside.

    Returns (boxes (K, 4), labels (K,), number of boxes cut by the window's edge and dropped).
    """
    x0, y0, x1, y1 = window
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inner = shifted.clone()
    inner[:, 0::2] = inner[:, 0::2].clamp(0, x1 - x0)
    inner[:, 1::2] = inner[:, 1::2].clamp(0, y1 - y0)
    visible = (inner[:, 2] - inner[:, 0]).clamp_min(0) * (inner[:, 3] - inner[:, 1]).clamp_min(0)
    seen = visible > 0
    keep = seen & (visible >= min_visible * area)
    return inner[keep], labels[keep], int((seen & ~keep).sum())


class Tiles(Dataset[tuple[torch.Tensor, Target]]):
    """Square tiles (``tile_windows``) of every image of ``source``, boxes cropped by ``crop_boxes``; empty
    tiles are kept. Items: (uint8 (3, tile, tile), {"boxes", "labels"}). Meant for a few large images: they
    are decoded once and kept in memory. ``cut``: boxes dropped at tile edges (logged once)."""

    def __init__(
        self, source: Dataset[Any], tile: int, overlap: float = 0.0, min_visible: float = 0.5
    ) -> None:
        self.images: list[torch.Tensor] = []
        self.tiles: list[tuple[int, Window, torch.Tensor, torch.Tensor]] = []
        self.cut = 0
        for i in range(len(source)):  # type: ignore[arg-type]
            image, target = to_tv(*source[i])
            self.images.append(image.as_subclass(torch.Tensor))
            boxes = target["boxes"].as_subclass(torch.Tensor)
            for win in tile_windows(image.shape[-1], image.shape[-2], tile, overlap):
                kept, labels, cut = crop_boxes(boxes, target["labels"], win, min_visible)
                self.tiles.append((i, win, kept, labels))
                self.cut += cut
        log.info(
            "%d image(s) cut into %d tiles of %d px; %d boxes cut by a tile edge dropped",
            len(self.images), len(self.tiles), tile, self.cut,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, Target]:
        i, (x0, y0, x1, y1), boxes, labels = self.tiles[k]
        return self.images[i][:, y0:y1, x0:x1], {"boxes": boxes.clone(), "labels": labels.clone()}


def overlaps(a: Window, b: Window) -> bool:
    """Whether two windows (x0, y0, x1, y1) share pixels."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def in_site_split(tiles: Tiles, every: int = 4) -> tuple[list[int], list[int]]:
    """(training tile indices, held-out tile indices): every ``every``-th tile (indices every - 1,
    2 * every - 1, ...) is held out; a training tile sharing pixels with a held-out tile of the same image
    (tiles shifted inwards at the image edges, or ``overlap`` > 0) is left out of both."""
    held = [k for k in range(len(tiles)) if k % every == every - 1]
    train = [
        k
        for k, (image, win, _, _) in enumerate(tiles.tiles)
        if k % every != every - 1
        and not any(tiles.tiles[h][0] == image and overlaps(win, tiles.tiles[h][1]) for h in held)
    ]
    return train, held


def tree_sets(
    data_dir: str | Path | None = None,
    tile: int = 400,
    overlap: float = 0.0,
    min_visible: float = 0.5,
    split: str = "out_of_site",
    every: int = 4,
) -> tuple[Dataset[Any], Dataset[Any]]:
    """(training tiles, held-out images), labels all 1 ("Tree").

    split "out_of_site": all tiles of the two large crops, and the two 400x400 images of other sites;
    "in_site": ``in_site_split(tiles, every)`` of the two large crops' tiles (same site, disjoint pixels).
    data_dir: deepforest's ``data`` folder; None = the installed package's (``deepforest_data()``).
    """
    root = Path(data_dir) if data_dir is not None else deepforest_data()

    def files(names: tuple[str, ...]) -> VOCFiles:
        return VOCFiles([root / f"{n}.png" for n in names], [root / f"{n}.xml" for n in names], ONE_CLASS)

    tiles = Tiles(files(TREE_TRAIN), tile, overlap, min_visible)
    if split == "out_of_site":
        return tiles, files(TREE_TEST)
    if split != "in_site":
        raise ValueError(f"trees split {split!r}: expected 'in_site' or 'out_of_site'")
    train, held = in_site_split(tiles, every)
    log.info("in-site split: %d training tiles, %d held-out tiles", len(train), len(held))
    return Subset(tiles, train), Subset(tiles, held)
