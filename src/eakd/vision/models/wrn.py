"""Wide ResNets (pre-activation blocks) of the KD literature: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Parameter names follow the published CIFAR-100 teacher checkpoints (mdistiller's cifar_teachers.tar).
Stage outputs are residual sums; ``preact_feats`` are mdistiller's: each stage output after the batch norm
that the next group's first block (the final ``bn1`` for the last stage) applies to it before its ReLU.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from eakd.vision.models.common import ModelOutput, feature_dict, global_pool, init_weights
from eakd.vision.models.registry import register_model


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut (1x1 conv of the activated input on shape change)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        same = in_ch == out_ch and stride == 1
        self.convShortcut = None if same else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: Tensor, normed: Tensor | None = None) -> Tensor:
        """x: (N, in_ch, H, W); normed: ``bn1(x)`` when the caller computed it already."""
        act = F.relu(self.bn1(x) if normed is None else normed)
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class WideStage(nn.Module):
    """``depth`` WideBlocks; the first one changes channels/stride."""

    def __init__(self, depth: int, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1) for i in range(depth))
        )

    def forward(self, x: Tensor, normed: Tensor | None = None) -> Tensor:
        """x: (N, in_ch, H, W); normed: the first block's ``bn1(x)`` when the caller computed it already."""
        first, *rest = self.layer
        x = first(x, normed)
        for block in rest:
            x = block(x)
        return x


class WideResNet(nn.Module):
    """WRN-depth-k: 3x3 stem of 16 channels, three stages of 16k/32k/64k channels, final BN-ReLU, linear.

    mdistiller applies the next group's ``bn1`` a second time to make its preact maps, which in training
    moves those running statistics twice per step; here each batch norm runs once (same outputs).
    """

    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        self.stage_channels = [16, 16 * widen, 32 * widen, 64 * widen]
        c = self.stage_channels
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
        self.block1 = WideStage(n, c[0], c[1], 1)
        self.block2 = WideStage(n, c[1], c[2], 2)
        self.block3 = WideStage(n, c[2], c[3], 2)
        self.bn1 = nn.BatchNorm2d(c[3])
        self.fc = nn.Linear(c[3], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, in_channels, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        # each stage output normalised once, by the next consumer's BN; reused as mdistiller's preact_feats
        n1 = self.block2.layer[0].bn1(f1)
        f2 = self.block2(f1, n1)
        n2 = self.block3.layer[0].bn1(f2)
        f3 = self.block3(f2, n2)
        n3 = self.bn1(f3)
        pooled = global_pool(F.relu(n3))
        return self.fc(pooled), feature_dict([f0, f1, f2, f3], pooled, [f0, n1, n2, n3])


@register_model("wrn_16_1")
def wrn_16_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-16-1 (0.18M parameters on CIFAR-100)."""
    return WideResNet(16, 1, num_classes, in_channels)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-16-2 (0.7M parameters on CIFAR-100)."""
    return WideResNet(16, 2, num_classes, in_channels)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-40-1 (0.57M parameters on CIFAR-100)."""
    return WideResNet(40, 1, num_classes, in_channels)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-40-2 (2.2M parameters on CIFAR-100)."""
    return WideResNet(40, 2, num_classes, in_channels)
