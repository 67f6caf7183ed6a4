"""CIFAR ShuffleNetV1 (g=3) and ShuffleNetV2 (1x) students of the KD literature.

Module and parameter names are mdistiller's (``ShuffleV1`` / ``ShuffleV2``: ``conv1``, ``bn1``,
``layer1..3``, ``linear``, per block ``conv1..conv5`` / ``bn1..bn5``), so its checkpoints load.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eakd.vision.models.common import ModelOutput, conv, feature_dict, global_pool, init_weights
from eakd.vision.models.registry import register_model


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, g*c, H, W): interleave the channels of the g groups."""
    n, ch, h, w = x.shape
    return x.view(n, groups, ch // groups, h, w).transpose(1, 2).reshape(n, ch, h, w)


class ShuffleV1Block(nn.Module):
    """Grouped 1x1 (conv1) -> shuffle -> 3x3 depthwise (conv2) -> grouped 1x1 (conv3). Stride 2: concat with
    a 3x3 avg-pooled input (the branch makes out_ch - in_ch channels); stride 1: residual sum. Returns the
    pre-ReLU output."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        branch_ch = out_ch - in_ch if stride == 2 else out_ch
        mid = branch_ch // 4
        self.first_groups = 1 if in_ch == 24 else groups  # the stem output is too narrow to split
        self.conv1 = conv(in_ch, mid, 1, groups=self.first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = conv(mid, mid, 3, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv(mid, branch_ch, 1, groups=groups)
        self.bn3 = nn.BatchNorm2d(branch_ch)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
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
        self.conv1 = conv(in_channels, 24, 1)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(ShuffleV1Block(in_ch, width, 2 if j == 0 else 1, groups))
                in_ch = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(in_ch, num_classes)
        self.stage_channels = [24, *widths]
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, in_channels, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        x = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [x], [x]
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                pre = block(x)
                x = F.relu(pre)
            feats.append(x)
            preacts.append(pre)
        pooled = global_pool(x)
        return self.linear(pooled), feature_dict(feats, pooled, preacts)


class ShuffleV2Block(nn.Module):
    """Split the channels in half, transform the second half (1x1 conv1, 3x3 dw conv2, 1x1 conv3), concat
    after the untouched first half, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = conv(half, half, 1)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = conv(half, half, 3, groups=half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = conv(half, half, 1)
        self.bn3 = nn.BatchNorm2d(half)

    def with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, pre-activation): the pre-activation is the kept half beside the branch before its last
        ReLU, unshuffled (mdistiller's ``preact_feats`` of a stage's last block)."""
        keep, x = x.chunk(2, dim=1)
        pre = self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))))
        return channel_shuffle(torch.cat([keep, F.relu(pre)], 1), 2), torch.cat([keep, pre], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.with_preact(x)[0]


class ShuffleV2Down(nn.Module):
    """Stride 2, both branches see the whole input: left 3x3 dw (conv1) -> 1x1 (conv2); right 1x1 (conv3) ->
    3x3 dw (conv4) -> 1x1 (conv5); concat to out_ch, shuffle."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        half = out_ch // 2
        self.conv1 = conv(in_ch, in_ch, 3, 2, groups=in_ch)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = conv(in_ch, half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = conv(in_ch, half, 1)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = conv(half, half, 3, 2, groups=half)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = conv(half, half, 1)
        self.bn5 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """1x1 stem of 24 channels, three stages (116/232/464 channels, 4/8/4 blocks), 1x1 conv to 1024, linear.

    stage_channels = [24, 116, 232, 464]; the pooled vector is 1024-d. ``preact_feats`` are mdistiller's: the
    stem output, then each stage's last block before its final ReLU (``ShuffleV2Block.with_preact``).
    """

    def __init__(self, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        widths, depths = [116, 232, 464], [4, 8, 4]
        self.conv1 = conv(in_channels, 24, 1)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = [ShuffleV2Down(in_ch, width), *(ShuffleV2Block(width) for _ in range(depth - 1))]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = width
        self.conv2 = conv(in_ch, 1024, 1)
        self.bn2 = nn.BatchNorm2d(1024)
        self.linear = nn.Linear(1024, num_classes)
        self.stage_channels = [24, *widths]
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, in_channels, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        x = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [x], [x]
        for stage in (self.layer1, self.layer2, self.layer3):
            x, pre = stage[-1].with_preact(stage[:-1](x))
            feats.append(x)
            preacts.append(pre)
        pooled = global_pool(F.relu(self.bn2(self.conv2(x))))
        return self.linear(pooled), feature_dict(feats, pooled, preacts)


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """CIFAR ShuffleNetV1, 3 groups (mdistiller's ``ShuffleV1``; 949,258 parameters on CIFAR-100)."""
    return ShuffleNetV1(num_classes, in_channels)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    """CIFAR ShuffleNetV2 1x (mdistiller's ``ShuffleV2``; 1,355,528 parameters on CIFAR-100)."""
    return ShuffleNetV2(num_classes, in_channels)
