"""CIFAR ShuffleNetV1 (g=3) and ShuffleNetV2 (1x) students of the KD literature."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eakd.vision.models.common import ModelOutput, conv_bn, feature_dict, global_pool, init_weights
from eakd.vision.models.registry import register_model


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, g*c, H, W): interleave the channels of the g groups."""
    n, ch, h, w = x.shape
    return x.view(n, groups, ch // groups, h, w).transpose(1, 2).reshape(n, ch, h, w)


class ShuffleV1Block(nn.Module):
    """Grouped 1x1 -> shuffle -> 3x3 depthwise -> grouped 1x1. Stride 2: concat with a 3x3 avg-pooled input
    (the branch makes out_ch - in_ch channels); stride 1: residual sum. Returns the pre-ReLU output."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        branch_ch = out_ch - in_ch if stride == 2 else out_ch
        mid = branch_ch // 4
        self.first_groups = 1 if in_ch == 24 else groups  # the stem output is too narrow to split
        self.reduce = conv_bn(in_ch, mid, 1, groups=self.first_groups)
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid)
        self.expand = conv_bn(mid, branch_ch, 1, groups=groups, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(self.depthwise(channel_shuffle(self.reduce(x), self.first_groups)))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)
        return out + x


class ShuffleNetV1(nn.Module):
    """1x1 stem of 24 channels, three stages (240/480/960 channels, 4/8/4 blocks, each opening at stride 2).

    stage_channels = [24, 240, 480, 960].
    """

    def __init__(self, num_classes: int = 100, in_channels: int = 3, groups: int = 3) -> None:
        super().__init__()
        widths, depths = [240, 480, 960], [4, 8, 4]
        self.stem = conv_bn(in_channels, 24, 1)
        in_ch = 24
        stages = []
        for width, depth in zip(widths, depths, strict=True):
            blocks = []
            for j in range(depth):
                blocks.append(ShuffleV1Block(in_ch, width, 2 if j == 0 else 1, groups))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(in_ch, num_classes)
        self.stage_channels = [24, *widths]
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, in_channels, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        x = self.stem(x)
        feats, preacts = [x], [x]
        for stage in self.stages:
            for block in stage:
                pre = block(x)
                x = F.relu(pre)
            feats.append(x)
            preacts.append(pre)
        pooled = global_pool(x)
        return self.fc(pooled), feature_dict(feats, pooled, preacts)


class ShuffleV2Block(nn.Module):
    """Stride 1: split channels in half, transform one half (1x1, 3x3 dw, 1x1), concat, shuffle.
    Stride 2: both branches see the whole input and halve the resolution, concat to out_ch, shuffle."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_ch // 2
        branch_in = in_ch if stride == 2 else in_ch // 2
        self.branch = nn.Sequential(
            conv_bn(branch_in, half, 1),
            conv_bn(half, half, 3, stride, groups=half, relu=False),
            conv_bn(half, half, 1),
        )
        self.down = None
        if stride == 2:
            self.down = nn.Sequential(
                conv_bn(in_ch, in_ch, 3, 2, groups=in_ch, relu=False), conv_bn(in_ch, half, 1)
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.down is None:
            keep, x = x.chunk(2, dim=1)
        else:
            keep = self.down(x)
        return channel_shuffle(torch.cat([keep, self.branch(x)], 1), 2)


class ShuffleNetV2(nn.Module):
    """1x1 stem of 24 channels, three stages (116/232/464 channels, 4/8/4 blocks), 1x1 conv to 1024, linear.

    stage_channels = [24, 116, 232, 464]; the pooled vector is 1024-d.
    """

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        widths, depths = [116, 232, 464], [4, 8, 4]
        self.stem = conv_bn(in_channels, 24, 1)
        in_ch = 24
        stages = []
        for width, depth in zip(widths, depths, strict=True):
            blocks = [ShuffleV2Block(in_ch, width, 2)]
            blocks += [ShuffleV2Block(width, width, 1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.head_conv = conv_bn(in_ch, 1024, 1)
        self.fc = nn.Linear(1024, num_classes)
        self.stage_channels = [24, *widths]
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, in_channels, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        x = self.stem(x)
        feats = [x]
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        pooled = global_pool(self.head_conv(x))
        return self.fc(pooled), feature_dict(feats, pooled)


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """CIFAR ShuffleNetV1, 3 groups (about 0.95M parameters on CIFAR-100)."""
    return ShuffleNetV1(num_classes, in_channels)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    """CIFAR ShuffleNetV2 1x (about 1.35M parameters on CIFAR-100)."""
    return ShuffleNetV2(num_classes, in_channels)
