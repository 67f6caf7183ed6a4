"""Image-classification data: CIFAR-100, Tiny-ImageNet, ImageNet, Fashion-MNIST and a synthetic set.

Items are ``(image (C, H, W) float32 normalised, target int)``, or ``(weak, strong, target)`` with
``two_views`` (MLKD). CIFAR-100, Fashion-MNIST and the synthetic set live in memory as uint8 tensors and are
augmented with tensor ops (no PIL per item); Tiny-ImageNet and ImageNet are read from image folders.

Recipes (train / eval):
- cifar100, synthetic: random 32x32 crop of the 4-pixel zero-padded image, horizontal flip / none.
- fashion_mnist: random 28x28 crop of the 2-pixel padded image, horizontal flip / none.
- tinyimagenet: random rotation (20 degrees), horizontal flip / none (64x64 images, as in mdistiller).
- imagenet: RandomResizedCrop(224), horizontal flip / resize 256, center crop 224.
All normalise with the data set's channel mean and std; ``augment=False`` uses the eval recipe for training.
"""

import gzip
import os
import pickle
import shutil
import struct
import subprocess
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets.folder import default_loader, find_classes
from torchvision.transforms import v2

from eakd.paths import cache_dir

DATASETS = ("cifar100", "tinyimagenet", "imagenet", "fashion_mnist", "synthetic")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# per data set: channel mean, channel std, native (train) image size, zero padding of the random crop
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...], int, int]] = {
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, 4),
    "fashion_mnist": ((0.2860,), (0.3530,), 28, 2),
    "synthetic": ((0.5,), (0.25,), 32, 4),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), 64, 0),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, 0),
}
_IN_MEMORY = ("cifar100", "fashion_mnist", "synthetic")

Transform = Callable[[Any], Tensor]


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


class ImageFiles(Dataset[tuple[Any, int]]):
    """Images read from ``samples`` = [(path, target)] (RGB PIL images; ``transform`` applied if given)."""

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], transform: Transform | None = None
    ) -> None:
        self.samples, self.classes, self.transform = samples, classes, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, target = self.samples[i]
        image = default_loader(str(path))
        return (image if self.transform is None else self.transform(image)), target


class TwoViews(Dataset[tuple[Tensor, Tensor, int]]):
    """MLKD's two views of each item of ``base`` (which must return raw images): (weak, strong, target)."""

    def __init__(self, base: Dataset[tuple[Any, int]], weak: Transform, strong: Transform) -> None:
        self.base, self.weak, self.strong = base, weak, strong
        self.classes: list[str] = base.classes  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        image, target = self.base[i]
        return self.weak(image), self.strong(image), target


class PadCropFlip:
    """Random crop of the ``pad``-padded (zeros) image back to its size, then a random horizontal flip.

    Tensor ops on one image (C, H, W) or a batch (B, C, H, W) with its own crop and flip per image.
    """

    batched = True

    def __init__(self, pad: int, flip: bool = True) -> None:
        self.pad, self.flip = pad, flip

    def __call__(self, images: Tensor) -> Tensor:
        batch = images if images.ndim == 4 else images[None]
        n, _, h, w = batch.shape
        if self.pad:
            padded = F.pad(batch, (self.pad,) * 4)
            rows = torch.randint(0, 2 * self.pad + 1, (n, 1)) + torch.arange(h)  # (n, h)
            cols = torch.randint(0, 2 * self.pad + 1, (n, 1)) + torch.arange(w)  # (n, w)
            picked = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
            batch = picked.permute(0, 3, 1, 2)  # advanced indexing put C last: (n, h, w, C)
        if self.flip:
            flip = torch.rand(n) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        return batch if images.ndim == 4 else batch[0]


class ScaleNormalize:
    """uint8 image(s) (..., C, H, W) -> float32: scaled to [0, 1], minus the mean, over the std."""

    batched = True

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: Tensor) -> Tensor:
        return (image.as_subclass(Tensor).float() / 255 - self.mean) / self.std


class Chain:
    """Apply transforms in order; ``batched`` (takes (B, C, H, W) batches) when all of them are."""

    def __init__(self, transforms: list[Transform]) -> None:
        self.transforms = transforms
        self.batched = all(getattr(t, "batched", False) for t in transforms)

    def __call__(self, image: Any) -> Tensor:
        for t in self.transforms:
            image = t(image)
        return image


def build_transform(
    name: str,
    train: bool,
    augment: bool = True,
    image_size: int | None = None,
    strong: Literal["autoaugment", "randaugment"] | None = None,
) -> Transform:
    """The recipe's transform (see the module docstring) of a raw image (uint8 tensor or PIL image).

    image_size: resize to this size (default: the data set's own). strong: add AutoAugment (CIFAR policy
    for the small sets, ImageNet policy otherwise) or RandAugment, as in MLKD's strong view.
    """
    mean, std, native, pad = _STATS[name]
    augment = augment and train
    size = image_size or native
    ops: list[Transform] = []
    if name in _IN_MEMORY:  # uint8 tensors already
        if image_size is not None:
            ops.append(v2.Resize(image_size, antialias=True))
        if augment:
            ops.append(PadCropFlip(pad * size // native))
    elif name == "imagenet":
        ops.append(v2.ToImage())
        if augment:
            ops += [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            ops += [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    else:  # tinyimagenet
        ops.append(v2.ToImage())
        if image_size is not None:
            ops.append(v2.Resize(image_size, antialias=True))
        if augment:
            ops += [v2.RandomRotation(20), v2.RandomHorizontalFlip()]
    if strong == "autoaugment":
        policy = v2.AutoAugmentPolicy.CIFAR10 if name in _IN_MEMORY else v2.AutoAugmentPolicy.IMAGENET
        ops.append(v2.AutoAugment(policy))
    elif strong == "randaugment":
        ops.append(v2.RandAugment())
    ops.append(ScaleNormalize(mean, std))
    return Chain(ops)


# ---- Fashion-MNIST ----


def read_idx(path: str | Path) -> Tensor:
    """Decode an idx-ubyte file (gzip-compressed if it ends in .gz) into a uint8 tensor of its shape."""
    raw = Path(path).read_bytes()
    data = gzip.decompress(raw) if str(path).endswith(".gz") else raw
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


@lru_cache(maxsize=8)
def _cached_idx(path: str, mtime_ns: int) -> Tensor:
    """read_idx, decoded once per file version and kept in memory."""
    return read_idx(path)


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists."""
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _fashion_mnist_candidates(root: str | Path | None) -> list[Path]:
    if root is not None:
        return [Path(root), Path(root) / "FashionMNIST" / "raw"]
    return [FASHION_MNIST_DIR, cache_dir("fashion-mnist", create=False) / "FashionMNIST" / "raw"]


def find_fashion_mnist(root: str | Path | None = None) -> Path | None:
    """The first folder holding all four Fashion-MNIST idx files (plain or .gz), or None.

    Looks in ``root`` and ``root/FashionMNIST/raw`` (torchvision's layout), or by default in
    /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist) and the eakd cache.
    """
    stems = [s for pair in FASHION_MNIST_FILES.values() for s in pair]
    for folder in _fashion_mnist_candidates(root):
        if all(_idx_file(folder, stem) for stem in stems):
            return folder
    return None


def fetch_fashion_mnist() -> Path:
    """Make Fashion-MNIST available and return its folder.

    Order: an existing copy (see ``find_fashion_mnist``); as root with apt-get, the Debian package
    dataset-fashion-mnist; else torchvision's download into the eakd cache (``$EAKD_CACHE``).
    """
    found = find_fashion_mnist()
    if found is not None:
        return found
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            subprocess.run(["apt-get", "update"], check=True)
            subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=True)
        except subprocess.CalledProcessError as err:
            print(f"apt-get failed ({err}); trying torchvision's download instead", flush=True)
        found = find_fashion_mnist()
        if found is not None:
            return found
    target = cache_dir("fashion-mnist")
    for train in (True, False):
        torchvision.datasets.FashionMNIST(str(target), train=train, download=True)
    return target / "FashionMNIST" / "raw"


def _fashion_mnist(
    root: str | Path | None, train: bool, download: bool, transform: Transform | None
) -> TensorImageDataset:
    folder = find_fashion_mnist(root)
    if folder is None and download:
        if root is None:
            folder = fetch_fashion_mnist()
        else:
            torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
            folder = find_fashion_mnist(root)
    if folder is None:
        looked = ", ".join(str(p) for p in _fashion_mnist_candidates(root))
        raise FileNotFoundError(
            f"Fashion-MNIST not found: looked for {'/'.join(FASHION_MNIST_FILES[train])}[.gz] in {looked}. "
            "Get it with `apt-get install dataset-fashion-mnist` (as root), `eakd fetch fashion-mnist`, "
            "or download=True (torchvision's download)."
        )
    images_path, labels_path = (_idx_file(folder, stem) for stem in FASHION_MNIST_FILES[train])
    assert images_path is not None and labels_path is not None
    images = _cached_idx(str(images_path), images_path.stat().st_mtime_ns)
    labels = _cached_idx(str(labels_path), labels_path.stat().st_mtime_ns)
    return TensorImageDataset(images.unsqueeze(1), labels, list(FASHION_MNIST_CLASSES), transform)


# ---- CIFAR-100 ----


def _cifar100(
    root: str | Path | None, train: bool, download: bool, transform: Transform | None
) -> TensorImageDataset:
    """Read torchvision's cifar-100-python/{train,test,meta} pickles (``root`` may be that folder itself)."""
    root = Path(root) if root is not None else cache_dir("cifar100")
    if download:
        torchvision.datasets.CIFAR100(str(root), train=train, download=True)
    folder = root if (root / "meta").is_file() else root / "cifar-100-python"
    split = folder / ("train" if train else "test")
    if not (split.is_file() and (folder / "meta").is_file()):
        raise FileNotFoundError(
            f"CIFAR-100 not found: looked for {split} and {folder / 'meta'}. Pass download=True "
            "(torchvision downloads cifar-100-python.tar.gz there), or point root at a folder holding "
            "cifar-100-python/ from https://www.cs.toronto.edu/~kriz/cifar.html."
        )
    with open(split, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    with open(folder / "meta", "rb") as f:
        classes = list(pickle.load(f, encoding="latin1")["fine_label_names"])
    images = torch.from_numpy(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
    return TensorImageDataset(images, torch.tensor(entry["fine_labels"]), classes, transform)


# ---- image folders: ImageNet, Tiny-ImageNet ----


def _image_folder(name: str, root: str | Path | None, train: bool, transform: Transform | None) -> Dataset:
    """root/train/<class>/* and root/val/<class>/*; Tiny-ImageNet's val/images + val/val_annotations.txt."""
    split = "train" if train else "val"
    how = {
        "tinyimagenet": "unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip and pass its folder as root",
        "imagenet": "arrange ILSVRC-2012 as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG under root",
    }[name]
    folder = Path(root if root is not None else "<root>") / split
    if root is None or not folder.is_dir():
        raise FileNotFoundError(f"{name} not found: looked for {folder} (root={root}); {how}")
    annotations = folder / "val_annotations.txt"
    if name == "tinyimagenet" and not train and annotations.is_file():
        return _tiny_val(Path(str(root)), annotations, transform)
    return torchvision.datasets.ImageFolder(str(folder), transform=transform)


def _tiny_val(root: Path, annotations: Path, transform: Transform | None) -> ImageFiles:
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
    return ImageFiles(samples, classes, transform)


# ---- synthetic ----


def synthetic_dataset(
    train: bool = True,
    num_samples: int = 512,
    num_classes: int = 10,
    channels: int = 3,
    size: int = 32,
    seed: int = 0,
    transform: Transform | None = None,
) -> TensorImageDataset:
    """Random but learnable uint8 images (num_samples, channels, size, size): the mean of a fixed per-class
    template and uniform noise. Templates depend on ``seed`` only; the two splits draw other samples."""
    templates = torch.rand(num_classes, channels, size, size, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(2 * seed + 1 + int(not train))
    targets = torch.randint(num_classes, (num_samples,), generator=g)
    noise = torch.rand(num_samples, channels, size, size, generator=g)
    images = ((templates[targets] + noise) * 127.5).round().to(torch.uint8)
    return TensorImageDataset(images, targets, [str(c) for c in range(num_classes)], transform)


# ---- entry points ----


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
    """One split of a data set (one of DATASETS) with its recipe's transform; the result has ``.classes``.

    Items are (image, target) or, with ``two_views``, (weak view, strong view, target). image_size:
    resize to this size. ``options`` go to the synthetic set (num_samples, num_classes, channels, size,
    seed). Missing data raises FileNotFoundError saying where it looked and how to get it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if options and name != "synthetic":
        raise TypeError(f"unexpected options for {name}: {sorted(options)}")
    weak = build_transform(name, train, augment, image_size)
    transform = None if two_views else weak
    base: Dataset
    if name == "synthetic":
        base = synthetic_dataset(train, transform=transform, **options)
    elif name == "fashion_mnist":
        base = _fashion_mnist(root, train, download, transform)
    elif name == "cifar100":
        base = _cifar100(root, train, download, transform)
    else:
        base = _image_folder(name, root, train, transform)
    if two_views:
        return TwoViews(base, weak, build_transform(name, train, augment, image_size, strong))
    return base


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


def build_loaders(
    cfg: Any, batch_size: int = 64, eval_batch_size: int | None = None, num_workers: int = 2
) -> tuple[DataLoader, DataLoader, dict[str, Any]]:
    """Shuffled train and ordered eval DataLoaders over ``build_datasets(cfg)``, plus its info dict."""
    train, evaluation, info = build_datasets(cfg)
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": num_workers > 0,
    }
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, **common)
    eval_loader = DataLoader(evaluation, batch_size=eval_batch_size or batch_size, shuffle=False, **common)
    return train_loader, eval_loader, info
