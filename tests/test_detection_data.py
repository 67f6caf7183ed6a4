"""Detection data: box transforms, sanitising with counts, COCO / VOC / CSV parsing on small files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eakd.detection.data import (
    DetectionDataset,
    DropCounts,
    collate,
    crop_boxes,
    hflip,
    load_coco,
    load_csv,
    load_voc,
    resize,
    sanitize_boxes,
    tile_records,
    tile_windows,
    vflip,
)


def _target(boxes: list[list[float]]) -> dict[str, torch.Tensor]:
    labels = torch.ones(len(boxes), dtype=torch.long)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": labels}


def _write_png(path: Path, width: int, height: int) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_flips_move_boxes_with_pixels() -> None:
    image = torch.zeros(3, 10, 20)
    image[:, 2:5, 3:7] = 1.0  # a box x 3..7, y 2..5
    target = _target([[3, 2, 7, 5]])
    im, t = hflip(image, target)
    assert t["boxes"].tolist() == [[13, 2, 17, 5]]
    assert im[:, 2:5, 13:17].min() == 1 and im.sum() == image.sum()
    im, t = vflip(image, target)
    assert t["boxes"].tolist() == [[3, 5, 7, 8]]
    assert im[:, 5:8, 3:7].min() == 1
    assert torch.equal(hflip(*hflip(image, target))[1]["boxes"], target["boxes"])


def test_resize_scales_boxes_per_axis() -> None:
    image = torch.randint(0, 255, (3, 40, 80), dtype=torch.uint8)
    im, t = resize(image, _target([[8, 4, 40, 20]]), (20, 20))
    assert im.shape == (3, 20, 20) and im.dtype == torch.uint8
    assert torch.allclose(t["boxes"], torch.tensor([[2.0, 2.0, 10.0, 10.0]]))


def test_sanitize_drops_and_counts() -> None:
    boxes = torch.tensor(
        [
            [1, 1, 5, 5],  # fine
            [-3, 2, 4, 6],  # partly outside: clipped
            [20, 20, 30, 30],  # outside
            [5, 5, 5, 9],  # zero width
            [6, 6, 2, 8],  # inverted
            [float("nan"), 0, 1, 1],  # non-finite
        ]
    )
    drops = DropCounts()
    kept, labels = sanitize_boxes(boxes, torch.arange(6), 10, 10, drops)
    assert kept.tolist() == [[1, 1, 5, 5], [0, 2, 4, 6]]
    assert labels.tolist() == [0, 1]
    c = drops.counts
    assert c["outside the image"] == c["smaller than 1 px"] == 1
    assert c["inverted (max < min)"] == c["non-finite"] == 1
    assert c["clipped"] == 1


def test_tiles_cover_and_crop_boxes() -> None:
    wins = tile_windows(1000, 450, 400)
    assert wins[0] == (0, 0, 400, 400) and wins[-1] == (600, 50, 1000, 450)
    assert all(x1 - x0 == 400 and y1 - y0 == 400 for x0, y0, x1, y1 in wins)
    drops = DropCounts()
    boxes = torch.tensor([[390.0, 10, 420, 30], [350, 10, 405, 30], [100, 100, 120, 120]])
    kept, _ = crop_boxes(boxes, torch.ones(3, dtype=torch.long), (0, 0, 400, 400), 0.5, drops)
    assert kept.tolist() == [[350, 10, 400, 30], [100, 100, 120, 120]]  # 1/3 of the first box is visible
    assert drops.counts["cut by a tile edge"] == 1
    kept, _ = crop_boxes(boxes, torch.ones(3, dtype=torch.long), (380, 0, 780, 400), 0.5, drops)
    assert kept.tolist() == [[10, 10, 40, 30]]  # the second box keeps 25/55 < 0.5 of its area
    assert drops.counts["cut by a tile edge"] == 2


def test_coco_parsing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_png(tmp_path / "a.png", 32, 24)
    _write_png(tmp_path / "b.png", 16, 16)
    ann = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 32, "height": 24},
            {"id": 9, "file_name": "b.png", "width": 16, "height": 16},
            {"id": 11, "file_name": "gone.png", "width": 16, "height": 16},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [2, 3, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [1, 1, 3, 3], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 3, "bbox": [40, 1, 3, 3], "iscrowd": 0},
            {"id": 5, "image_id": 7, "category_id": 3, "bbox": [5, 5, 0, 3], "iscrowd": 0},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with caplog.at_level(logging.WARNING):
        records, names = load_coco(tmp_path / "ann.json", tmp_path)
    assert names == ["car", "dog"]  # sorted by category id: car (3) -> 1, dog (18) -> 2
    assert records[0].boxes.tolist() == [[2, 3, 12, 8], [0, 0, 4, 4]]
    assert records[0].labels.tolist() == [2, 1]
    assert len(records[1].boxes) == 0  # an image without boxes is kept
    assert len(records) == 2 and "1 images missing on disk" in caplog.text
    assert "1 crowd" in caplog.text and "1 outside the image" in caplog.text
    image, target = DetectionDataset(records)[1]
    assert image.shape == (3, 16, 16) and target["boxes"].shape == (0, 4)


VOC = """<annotation><filename>{name}</filename>
<size><width>20</width><height>10</height><depth>3</depth></size>
<object><name>Tree</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>6</xmax><ymax>8</ymax></bndbox></object>
<object><name>Bush</name><bndbox><xmin>3</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>
<object><name>Tree</name><bndbox><xmin>4</xmin><ymin>4</ymin><xmax>4</xmax><ymax>8</ymax></bndbox></object>
</annotation>"""


def test_voc_parsing(tmp_path: Path) -> None:
    _write_png(tmp_path / "x.png", 20, 10)
    (tmp_path / "x.xml").write_text(VOC.format(name="x.tif"))  # listed as .tif, shipped as .png
    records, names = load_voc([tmp_path / "x.xml"], tmp_path)
    assert names == ["Tree", "Bush"] and records[0].image == tmp_path / "x.png"
    assert records[0].boxes.tolist() == [[1, 2, 6, 8], [3, 1, 9, 9]] and records[0].labels.tolist() == [1, 2]
    records, names = load_voc([tmp_path / "x.xml"], tmp_path, classes=["Tree"])
    assert names == ["Tree"] and records[0].labels.tolist() == [1]


def test_csv_parsing_and_tiling(tmp_path: Path) -> None:
    _write_png(tmp_path / "big.png", 64, 48)
    _write_png(tmp_path / "empty.png", 8, 8)
    rows = [
        "image_path,xmin,ymin,xmax,ymax,label",
        "big.png,2,2,10,12,Tree",
        "big.png,40,30,60,46,Dead",
        "big.png,50,10,70,20,Tree",
        "empty.png,,,,,",
    ]
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    records, names = load_csv(tmp_path / "boxes.csv")
    assert names == ["Tree", "Dead"]
    assert records[0].boxes.tolist() == [[2, 2, 10, 12], [40, 30, 60, 46], [50, 10, 64, 20]]
    assert records[0].labels.tolist() == [1, 2, 1] and len(records[1].boxes) == 0
    tiles = tile_records(records[:1], 32)
    assert len(tiles) == 4 and all(t.window is not None for t in tiles)
    ds = DetectionDataset(tiles, size=(16, 16))
    images, targets = collate([ds[i] for i in range(len(ds))])
    assert all(im.shape == (3, 16, 16) and im.min() >= 0 and im.max() <= 1 for im in images)
    assert targets[0]["boxes"].tolist() == [[1, 1, 5, 6]]  # tile (0, 0, 32, 32) halved
