"""Image-classification transforms: a data set's ``Recipe`` turned into its train / eval transform.

Images arrive raw: uint8 tensors (C, H, W) for in-memory sets, PIL images for image folders. The in-memory
recipe ("pad_crop_flip") is made of tensor ops that also take whole batches (B, C, H, W) at once
(``batched = True``), so ``TensorImageDataset.__getitems__`` augments a batch in one call.

Augmentations (train / eval); all end scaled to [0, 1] and normalised with the recipe's mean and std:
- pad_crop_flip: random crop of the ``pad``-pixel zero-padded image back to its size, horizontal flip / none.
- resized_crop: RandomResizedCrop(size), horizontal flip / resize to size / 0.875, centre crop size.
- rotate_flip: random rotation (20 degrees), horizontal flip / none.
``augment=False`` uses the eval recipe for training.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

Transform = Callable[[Any], Tensor]


@dataclass(frozen=True)
class Recipe:
    """How one data set is augmented and normalised.

    mean, std: per channel, of pixels scaled to [0, 1]. size: native (train) image side in pixels.
    pad: zero padding in pixels (at the native size) of pad_crop_flip's random crop.
    augment: "pad_crop_flip" for uint8 tensor images, "resized_crop" or "rotate_flip" for PIL images
    (see the module docstring); the strong view's AutoAugment uses the CIFAR policy for pad_crop_flip
    and the ImageNet policy otherwise.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    pad: int = 0
    augment: Literal["pad_crop_flip", "resized_crop", "rotate_flip"] = "pad_crop_flip"


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


def build_transform(
    recipe: Recipe,
    train: bool,
    augment: bool = True,
    image_size: int | None = None,
    strong: Literal["autoaugment", "randaugment"] | None = None,
) -> Transform:
    """The recipe's transform (see the module docstring) of a raw image (uint8 tensor or PIL image).

    image_size: resize to this side in pixels (default: the recipe's own). strong: add AutoAugment or
    RandAugment, as in MLKD's strong view. Returns float32 (C, H, W) images.
    """
    augment = augment and train
    size = image_size or recipe.size
    ops: list[Transform] = []
    if recipe.augment == "pad_crop_flip":  # uint8 tensors already
        if image_size is not None:
            ops.append(v2.Resize(image_size, antialias=True))
        if augment:
            ops.append(PadCropFlip(recipe.pad * size // recipe.size))
    elif recipe.augment == "resized_crop":
        ops.append(v2.ToImage())
        if augment:
            ops += [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            ops += [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    else:  # rotate_flip
        ops.append(v2.ToImage())
        if image_size is not None:
            ops.append(v2.Resize(image_size, antialias=True))
        if augment:
            ops += [v2.RandomRotation(20), v2.RandomHorizontalFlip()]
    if strong == "autoaugment":
        small = recipe.augment == "pad_crop_flip"
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10 if small else v2.AutoAugmentPolicy.IMAGENET))
    elif strong == "randaugment":
        ops.append(v2.RandAugment())
    ops.append(ScaleNormalize(recipe.mean, recipe.std))
    return Chain(ops)
