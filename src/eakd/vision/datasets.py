"""Image-classification data sets, found by name in ``DATASETS``; read through torchvision.datasets.

A data set is a builder ``builder(root, train, download, **options) -> (dataset, recipe)``: ``dataset``
yields raw ``(image, target)`` items (uint8 (C, H, W) tensors or PIL images), has ``.classes`` and a
``.transform`` attribute (None; applied to each image, as in torchvision); ``recipe`` (a ``Recipe``) says
how it is augmented and normalised. Users add their own::

    from eakd.vision import DATASETS, Recipe

    @DATASETS.register("my_images")
    def my_images(root, train, download):
        folder = torchvision.datasets.ImageFolder(f"{root}/{'train' if train else 'val'}")
        return folder, Recipe(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), size=64, augment="rotate_flip")

Built in: fashion_mnist, cifar100 (in memory as uint8 tensors, augmented a batch at a time), tinyimagenet,
imagenet (image folders) and synthetic. ``root`` None means ``$EAKD_CACHE/data`` (default
~/.cache/eakd/data) in torchvision's layout, e.g. ``data/FashionMNIST/raw/train-images-idx3-ubyte``.
Missing data raises FileNotFoundError naming where it looked and how to get it.
"""

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision.datasets.folder import default_loader, find_classes

from eakd.args import one_line
from eakd.paths import cache_dir
from eakd.registry import Registry
from eakd.vision.transforms import Recipe, Transform, TwoViews, build_transform

Builder = Callable[..., tuple[Dataset, Recipe]]
D = TypeVar("D")
DATASETS: Registry[Builder] = Registry("data set")

FASHION_MNIST = Recipe(mean=(0.2860,), std=(0.3530,), size=28, pad=2)
CIFAR100 = Recipe(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), size=32, pad=4)
SYNTHETIC = Recipe(mean=(0.5,), std=(0.25,), size=32, pad=4)
TINYIMAGENET = Recipe((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), size=64, augment="rotate_flip")
IMAGENET = Recipe((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), size=224, augment="resized_crop")

FASHION_MNIST_FILES = [
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
]  # fmt: skip


class TensorImageDataset(Dataset[tuple[Any, int]]):
    """Images held as one uint8 tensor (N, C, H, W) with int64 targets (N,).

    Items: ``(transform(images[i]), targets[i])``; without a transform the raw uint8 (C, H, W) image.
    A transform with ``batched = True`` (PadCropFlip, ScaleNormalize, a Chain of them) is applied to whole
    batches when a DataLoader fetches them (``__getitems__``): no per-item Python work.
    """

    def __init__(
        self, images: Tensor, targets: Tensor, classes: list[str], transform: Transform | None = None
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(targets):
            shape = tuple(images.shape)
            raise ValueError(f"need uint8 images (N, C, H, W) and N targets; got {images.dtype} {shape}")
        self.images, self.targets, self.classes, self.transform = images, targets.long(), classes, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = self.images[i]
        return (image if self.transform is None else self.transform(image)), int(self.targets[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, int]]:
        """Many items at once (the DataLoader's batched fetch): one call of a ``batched`` transform."""
        if not getattr(self.transform, "batched", False):
            return [self[i] for i in indices]
        images = self.transform(self.images[indices])  # type: ignore[misc]
        return list(zip(images, self.targets[indices].tolist(), strict=True))


def downloaded(what: str, url: str, folder: Path, read: Callable[[], D]) -> D:
    """``read()``: a torchvision reader that downloads what is missing from ``url`` into ``folder``. A failed
    download (offline, a refused connection, a broken archive) is a FileNotFoundError saying what was
    tried, from where, and where to put the files by hand."""
    try:
        return read()
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError; a bad archive a RuntimeError
        raise FileNotFoundError(
            f"{what}: downloading {url} into {folder} failed ({one_line(err)}); fetch it where you can and "
            f"unpack it into {folder} (or set data.root to a folder holding it)"
        ) from None


def data_root(root: str | Path | None) -> Path:
    """``root``, or by default ``$EAKD_CACHE/data`` (not created here)."""
    return Path(root) if root is not None else cache_dir("data", create=False)


def find_fashion_mnist(root: str | Path | None = None) -> Path | None:
    """``ROOT/FashionMNIST/raw`` (ROOT: see ``data_root``) if it holds the four idx files torchvision
    reads, else None."""
    folder = data_root(root) / "FashionMNIST" / "raw"
    return folder if all((folder / name).is_file() for name in FASHION_MNIST_FILES) else None


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str | Path | None, train: bool, download: bool) -> tuple[TensorImageDataset, Recipe]:
    """Fashion-MNIST (60k / 10k images (1, 28, 28)) from ``ROOT/FashionMNIST/raw``, torchvision's reader."""
    if not download and find_fashion_mnist(root) is None:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: looked for {', '.join(FASHION_MNIST_FILES)} in "
            f"{data_root(root) / 'FashionMNIST' / 'raw'}. Run `make fetch` (copies this machine's offline "
            "copy to $EAKD_CACHE/data) or set data.download=true (torchvision's download)."
        )
    mirror = torchvision.datasets.FashionMNIST.mirrors[0]
    source = downloaded(
        "Fashion-MNIST",
        f"{mirror} ({', '.join(f + '.gz' for f in FASHION_MNIST_FILES)})",
        data_root(root) / "FashionMNIST" / "raw",
        lambda: torchvision.datasets.FashionMNIST(str(data_root(root)), train=train, download=download),
    )
    return TensorImageDataset(source.data.unsqueeze(1), source.targets, list(source.classes)), FASHION_MNIST


class CIFAR100Files(torchvision.datasets.CIFAR100):
    """torchvision's CIFAR-100 reader that checks the pickles exist, not their md5 (the downloaded archive's
    md5 is still checked); so any copy in the official format loads, and loading hashes nothing."""

    train_list: ClassVar[list[list[str | None]]] = [["train", None]]
    test_list: ClassVar[list[list[str | None]]] = [["test", None]]
    meta: ClassVar[dict[str, str | None]] = {**torchvision.datasets.CIFAR100.meta, "md5": None}


@DATASETS.register("cifar100")
def cifar100(root: str | Path | None, train: bool, download: bool) -> tuple[TensorImageDataset, Recipe]:
    """CIFAR-100 (50k / 10k images (3, 32, 32)) from ``ROOT/cifar-100-python/{train,test,meta}``; ``root``
    may also be the cifar-100-python folder itself."""
    parent = data_root(root)
    if (parent / "meta").is_file():
        parent = parent.parent
    folder = parent / CIFAR100Files.base_folder
    if not download and not all((folder / name).is_file() for name in ("train", "test", "meta")):
        raise FileNotFoundError(
            f"CIFAR-100 not found: looked for train, test and meta in {folder}. Set data.download=true "
            "(torchvision's download), or unpack https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz "
            f"in {parent}."
        )
    source = downloaded(
        "CIFAR-100",
        CIFAR100Files.url,
        parent,
        lambda: CIFAR100Files(str(parent), train=train, download=download),
    )
    images = torch.from_numpy(source.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    return TensorImageDataset(images, torch.tensor(source.targets), list(source.classes)), CIFAR100


def _split_folder(folder: Path, train: bool, name: str, how: str) -> Path:
    """``folder/train`` or ``folder/val``; FileNotFoundError saying ``how`` to get it if missing."""
    split = folder / ("train" if train else "val")
    if not split.is_dir():
        raise FileNotFoundError(f"{name} not found: looked for {split}; {how}")
    return split


class ImageFiles(Dataset[tuple[Any, int]]):
    """Images read from ``samples`` = [(path, target)] (RGB PIL images; ``transform`` applied if set)."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str]) -> None:
        self.samples, self.classes = samples, classes
        self.transform: Transform | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, target = self.samples[i]
        image = default_loader(str(path))
        return (image if self.transform is None else self.transform(image)), target


def _tiny_val(root: Path, annotations: Path) -> ImageFiles:
    """Tiny-ImageNet's original val layout: val/images/<file> labelled by val_annotations.txt (tab-separated
    file, wnid, box); class indices follow the train folder (sorted wnids) or else wnids.txt."""
    if (root / "train").is_dir():
        classes, _ = find_classes(str(root / "train"))
    else:
        classes = sorted((root / "wnids.txt").read_text().split())
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for line in annotations.read_text().splitlines():
        if line.strip():
            file, wnid = line.split("\t")[:2]
            samples.append((annotations.parent / "images" / file, index[wnid]))
    return ImageFiles(samples, classes)


@DATASETS.register("tinyimagenet")
def tinyimagenet(root: str | Path | None, train: bool, download: bool) -> tuple[Dataset, Recipe]:
    """Tiny-ImageNet-200 (64x64 RGB) unzipped at ``root`` (default ``$EAKD_CACHE/data/tiny-imagenet-200``):
    train/<wnid>/images/*, and val/<wnid>/* or the original val/images + val/val_annotations.txt."""
    folder = Path(root) if root is not None else data_root(None) / "tiny-imagenet-200"
    how = "unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip and set data.root to its folder"
    split = _split_folder(folder, train, "tinyimagenet", how)
    if not train and (split / "val_annotations.txt").is_file():
        return _tiny_val(folder, split / "val_annotations.txt"), TINYIMAGENET
    return torchvision.datasets.ImageFolder(str(split)), TINYIMAGENET


@DATASETS.register("imagenet")
def imagenet(root: str | Path | None, train: bool, download: bool) -> tuple[Dataset, Recipe]:
    """ILSVRC-2012 as ``root``/{train,val}/<wnid>/*.JPEG (default root ``$EAKD_CACHE/data/imagenet``)."""
    folder = Path(root) if root is not None else data_root(None) / "imagenet"
    how = "arrange ILSVRC-2012 as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG there"
    return torchvision.datasets.ImageFolder(str(_split_folder(folder, train, "imagenet", how))), IMAGENET


@DATASETS.register("synthetic")
def synthetic(
    root: str | Path | None,
    train: bool,
    download: bool,
    num_samples: int = 512,
    num_classes: int = 10,
    channels: int = 3,
    size: int = 32,
    seed: int = 0,
) -> tuple[TensorImageDataset, Recipe]:
    """Random but learnable uint8 images (num_samples, channels, size, size): the mean of a fixed per-class
    template and uniform noise. Templates depend on ``seed`` only; the two splits draw other samples."""
    templates = torch.rand(num_classes, channels, size, size, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(2 * seed + 1 + int(not train))
    targets = torch.randint(num_classes, (num_samples,), generator=g)
    noise = torch.rand(num_samples, channels, size, size, generator=g)
    images = ((templates[targets] + noise) * 127.5).round().to(torch.uint8)
    return TensorImageDataset(images, targets, [str(c) for c in range(num_classes)]), SYNTHETIC


def build_dataset(
    name: str,
    root: str | Path | None = None,
    train: bool = True,
    *,
    download: bool = False,
    augment: bool = True,
    two_views: bool = False,
    strong: Literal["autoaugment", "randaugment"] = "autoaugment",
    image_size: int | None = None,
    **options: Any,
) -> Dataset:
    """One split of the data set ``name`` (in DATASETS) with its recipe's transform; has ``.classes``.

    Items are (image (C, H, W) float32, target) or, with ``two_views``, (weak view, strong view, target).
    image_size: resize to this side in pixels. ``options`` go to the builder (e.g. the synthetic set's
    num_samples, num_classes, channels, size, seed).
    """
    builder = DATASETS.get(name)
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            takes = sorted(set(params) - {"root", "train", "download"})
            raise ValueError(
                f"data set {name!r} takes no option(s) {unknown} (data.options); it takes {takes}"
            )
    dataset, recipe = builder(root, train, download, **options)
    weak = build_transform(recipe, train, augment, image_size)
    if two_views:
        return TwoViews(dataset, weak, build_transform(recipe, train, augment, image_size, strong))
    dataset.transform = weak  # type: ignore[attr-defined]
    return dataset


def _subset(dataset: Dataset, n: int | None) -> Dataset:
    """n items spread evenly over ``dataset`` (all classes of a class-sorted folder), or all of it."""
    size = len(dataset)  # type: ignore[arg-type]
    if n is None or n >= size:
        return dataset
    subset = Subset(dataset, torch.linspace(0, size - 1, n).round().long().tolist())
    subset.classes = dataset.classes  # type: ignore[attr-defined]
    return subset


def build_datasets(cfg: Any) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """Train and eval splits from a data config (``eakd.engine.config.DataConfig`` or any object with
    its fields: name, root, download, augment, two_views, train_subset, eval_subset, options).

    Returns (train set, eval set, info) with info = {"num_classes", "in_channels", "classes"}. Two views
    apply to the train split only. ``options`` go to build_dataset (e.g. image_size, strong, num_samples).
    train_subset / eval_subset keep that many items, spread evenly over the split.
    """
    common = {"root": getattr(cfg, "root", None), "download": getattr(cfg, "download", False)}
    options = dict(getattr(cfg, "options", None) or {})
    train = build_dataset(
        cfg.name,
        train=True,
        augment=getattr(cfg, "augment", True),
        two_views=getattr(cfg, "two_views", False),
        **common,
        **options,
    )
    evaluation = build_dataset(cfg.name, train=False, **common, **options)
    classes: list[str] = train.classes  # type: ignore[attr-defined]
    info = {"num_classes": len(classes), "in_channels": evaluation[0][0].shape[0], "classes": classes}
    train = _subset(train, getattr(cfg, "train_subset", None))
    evaluation = _subset(evaluation, getattr(cfg, "eval_subset", None))
    return train, evaluation, info
