"""The detection data sets a config names (``data.name``): a registry of builders.

A builder takes the config's ``data`` section and returns ``DetectionData(train, eval, classes)``: two
sources (``eval`` may be None) whose items are ``(image, {"boxes": (M, 4) xyxy pixels, "labels": (M,)
int64 in 1..len(classes)})``, the image a PIL image or a uint8 (3, H, W) tensor. ``build_datasets`` adds
the subsets, resizing, augmentation and box sanitising. Add your own::

    from eakd.detection import DATASETS, DetectionData

    @DATASETS.register("my_boxes")
    def my_boxes(data):
        return DetectionData(MyBoxes(data.root, "train"), MyBoxes(data.root, "val"), ["cat", "dog"])

and set ``data.name: my_boxes`` (with ``imports: [my_module]``), or name it ``"my_module:my_boxes"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from torch.utils.data import Dataset

from eakd.detection.data import CsvBoxes, VOCFiles, coco
from eakd.detection.trees import tree_sets
from eakd.registry import Registry

if TYPE_CHECKING:
    from eakd.engine.config import DataConfig


class DetectionData(NamedTuple):
    """What a detection data-set builder returns: train source, eval source (or None), class names."""

    train: Dataset[Any]
    eval: Dataset[Any] | None
    classes: list[str]


DATASETS: Registry[Callable[[DataConfig], DetectionData]] = Registry("detection data set")


def _root(data: DataConfig) -> Path:
    """data.root with ``~`` expanded (None: the current folder)."""
    return Path(data.root).expanduser() if data.root else Path(".")


@DATASETS.register("coco")
def coco_data(data: DataConfig) -> DetectionData:
    """COCO json: options train_ann, train_images, eval_ann, eval_images (paths relative to data.root)."""
    opt, root = data.options, _root(data)
    train, names = coco(root / opt["train_images"], root / opt["train_ann"])
    evals = coco(root / opt["eval_images"], root / opt["eval_ann"])[0] if "eval_ann" in opt else None
    return DetectionData(train, evals, names)


@DATASETS.register("voc")
def voc_data(data: DataConfig) -> DetectionData:
    """root/Annotations/<id>.xml, root/JPEGImages/<id><image_ext>, ids from root/ImageSets/Main/<split>.txt.

    Options: train_split ("train"), eval_split ("val"), classes (None: in order of appearance in the train
    split), image_ext (".jpg").
    """
    opt, root = data.options, _root(data)
    ext = opt.get("image_ext", ".jpg")
    train = VOCFiles.folder(root, opt.get("train_split", "train"), opt.get("classes"), ext)
    names = list(train.classes)
    return DetectionData(train, VOCFiles.folder(root, opt.get("eval_split", "val"), names, ext), names)


@DATASETS.register("csv")
def csv_data(data: DataConfig) -> DetectionData:
    """CSV image_path,xmin,ymin,xmax,ymax,label: options train_csv, eval_csv, image_root (default: each
    CSV's folder), classes (None: in order of appearance in the train CSV)."""
    opt, root = data.options, _root(data)
    train = CsvBoxes(root / opt["train_csv"], opt.get("image_root"), opt.get("classes"))
    evals = (
        CsvBoxes(root / opt["eval_csv"], opt.get("image_root"), train.classes) if "eval_csv" in opt else None
    )
    return DetectionData(train, evals, train.classes)


@DATASETS.register("trees")
def trees_data(data: DataConfig) -> DetectionData:
    """The deepforest tree images (data.root: its data folder, None = the installed package); options tile
    (400 px), overlap (0.0), min_visible (0.5), split ("out_of_site": the two images of other sites held
    out; "in_site": every ``hold_out_every``-th tile (4) of the training crops held out)."""
    opt = data.options
    train, test = tree_sets(
        data.root,
        opt.get("tile", 400),
        opt.get("overlap", 0.0),
        opt.get("min_visible", 0.5),
        opt.get("split", "out_of_site"),
        opt.get("hold_out_every", 4),
    )
    return DetectionData(train, test, ["Tree"])
