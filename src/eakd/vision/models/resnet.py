"""CIFAR ResNets of the KD literature (CRD / mdistiller lineage): resnet8..110, resnet8x4/32x4, resnet50.

Parameter names follow the published CIFAR-100 teacher checkpoints (mdistiller's cifar_teachers.tar), so
``load_checkpoint`` reads them as they are. Stages run at input size, 1/2, 1/4 (and 1/8 for resnet50).
"""

import torch.nn.functional as F
from torch import Tensor, nn

from eakd.vision.models.common import ModelOutput, feature_dict, global_pool, init_weights
from eakd.vision.models.registry import register_model


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """1x1 conv + BN projection when the shape changes, else None (identity)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """3x3 -> 3x3 residual block; forward returns the sum before the final ReLU."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_ch, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return out + (x if self.downsample is None else self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) residual block; forward returns the sum before the final ReLU."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + (x if self.shortcut is None else self.shortcut(x))


def run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run blocks that return pre-activations; returns (output after ReLU, last pre-activation)."""
    pre = x
    for block in stage:
        pre = block(x)
        x = F.relu(pre)
    return x, pre


class ResNet(nn.Module):
    """Stem (3x3 conv, BN, ReLU; no max-pool) and residual stages ``layer1..layerK``, global pool, linear.

    Args:
        block: BasicBlock or Bottleneck.
        depths: blocks per stage; the first stage keeps the resolution, the others halve it.
        widths: stem channels followed by each stage's ``planes``.
        head: attribute name of the classifier ("fc" for the CIFAR ResNets, "linear" for resnet50).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: list[int],
        widths: list[int],
        num_classes: int = 100,
        in_channels: int = 3,
        head: str = "fc",
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.stage_names: list[str] = []
        in_ch = widths[0]
        for i, (depth, planes) in enumerate(zip(depths, widths[1:], strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(block(in_ch, planes, 2 if i > 0 and j == 0 else 1))
                in_ch = planes * block.expansion
            self.stage_names.append(f"layer{i + 1}")
            self.add_module(self.stage_names[-1], nn.Sequential(*blocks))
        self.head = head
        self.add_module(head, nn.Linear(in_ch, num_classes))
        self.stage_channels = [widths[0]] + [w * block.expansion for w in widths[1:]]
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, in_channels, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        x = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [x], [x]
        for name in self.stage_names:
            x, pre = run_stage(getattr(self, name), x)
            feats.append(x)
            preacts.append(pre)
        pooled = global_pool(x)
        return getattr(self, self.head)(pooled), feature_dict(feats, pooled, preacts)


def _cifar_resnet(depth: int, widths: list[int], num_classes: int, in_channels: int) -> ResNet:
    """Three BasicBlock stages of (depth - 2) / 6 blocks each."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n, n, n], widths, num_classes, in_channels)


_NARROW = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]


def _register_cifar_resnet(name: str, depth: int, widths: list[int]) -> None:
    def build(num_classes: int = 100, in_channels: int = 3) -> ResNet:
        return _cifar_resnet(depth, widths, num_classes, in_channels)

    build.__doc__ = f"CIFAR ResNet-{depth}, channels {widths}."
    register_model(name)(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_cifar_resnet(f"resnet{_depth}", _depth, _NARROW)
_register_cifar_resnet("resnet8x4", 8, _WIDE)
_register_cifar_resnet("resnet32x4", 32, _WIDE)


@register_model("resnet50")
def resnet50(num_classes: int = 100, in_channels: int = 3) -> ResNet:
    """CIFAR Bottleneck ResNet-50: 3x3 stem of 64 channels, stages [3, 4, 6, 3], 2048-d pooled vector."""
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 64, 128, 256, 512], num_classes, in_channels, head="linear")
