"""MobileNets: the CIFAR MobileNetV2 student of the KD literature and MobileNetV1 for ImageNet."""

from torch import Tensor, nn

from eakd.vision.models.common import ModelOutput, conv_bn, feature_dict, global_pool, init_weights
from eakd.vision.models.registry import register_model


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> linear 1x1 projection; residual if shapes match.

    ``conv`` is one flat Sequential (conv, BN, ReLU, dw conv, BN, ReLU, conv, BN: keys ``conv.0`` ..
    ``conv.7``), and the 1x1 expansion is there also at expansion factor 1, as in mdistiller's
    ``mobile_half``, so its checkpoints load.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.conv = nn.Sequential(
            *conv_bn(in_ch, hidden, 1),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *conv_bn(hidden, out_ch, 1, relu=False),
        )
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


# (expand ratio, channels, blocks, first stride); CIFAR variant: the 24-channel group keeps resolution.
_V2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
# groups whose outputs are reported as stage features (ends of the 1/2, 1/4, 1/8 and 1/16 resolutions)
_V2_FEATURE_GROUPS = (1, 2, 4, 6)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 (mdistiller's ``mobile_half`` at width 0.5, same state-dict keys): stride-2 3x3
    stem ``conv1``, 7 inverted-residual groups ``blocks``, 1x1 ``conv2`` to 1280, pool, ``classifier.0``.

    Stage features: stem, then the outputs of groups 1, 2, 4 and 6 (1/2, 1/4, 1/8, 1/16 of the input).
    With ``width=0.5`` (the KD literature's "MobileNetV2" student) stage_channels = [16, 12, 16, 48, 160].
    """

    def __init__(self, width: float = 0.5, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        in_ch = int(32 * width)
        self.conv1 = conv_bn(in_channels, in_ch, 3, 2)
        self.stage_channels = [in_ch]
        groups = []
        for i, (expand, channels, blocks, stride) in enumerate(_V2_SETTINGS):
            out_ch = int(channels * width)
            layers = []
            for j in range(blocks):
                layers.append(InvertedResidual(in_ch, out_ch, stride if j == 0 else 1, expand))
                in_ch = out_ch
            groups.append(nn.Sequential(*layers))
            if i in _V2_FEATURE_GROUPS:
                self.stage_channels.append(out_ch)
        self.blocks = nn.ModuleList(groups)
        last = max(1280, int(1280 * width))
        self.conv2 = conv_bn(in_ch, last, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, in_channels, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        x = self.conv1(x)
        feats = [x]
        for i, group in enumerate(self.blocks):
            x = group(x)
            if i in _V2_FEATURE_GROUPS:
                feats.append(x)
        pooled = global_pool(self.conv2(x))
        return self.classifier(pooled), feature_dict(feats, pooled)


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 100, in_channels: int = 3, width: float = 0.5) -> MobileNetV2:
    """CIFAR MobileNetV2, width multiplier 0.5 by default (the KD literature's student, mdistiller's
    ``mobile_half``: 812,836 parameters on CIFAR-100)."""
    return MobileNetV2(width, num_classes, in_channels)


def _separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv-BN-ReLU then 1x1 pointwise conv-BN-ReLU."""
    return nn.Sequential(conv_bn(in_ch, in_ch, 3, stride, groups=in_ch), conv_bn(in_ch, out_ch, 1))


# per stage: (channels, blocks); each stage after the stem opens with a stride-2 block
_V1_STAGES = [(128, 2), (256, 2), (512, 6), (1024, 2)]


class MobileNetV1(nn.Module):
    """ImageNet MobileNetV1 (4.2M parameters): stride-2 stem + 64-channel separable block (1/2 resolution),
    then four stages at 1/4, 1/8, 1/16, 1/32 with 128/256/512/1024 channels, pool, linear.

    stage_channels = [64, 128, 256, 512, 1024].
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(in_channels, 32, 3, 2), _separable(32, 64, 1))
        in_ch = 64
        stages = []
        for channels, blocks in _V1_STAGES:
            layers = [_separable(in_ch, channels, 2)]
            layers += [_separable(channels, channels, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = channels
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(in_ch, num_classes)
        self.stage_channels = [64] + [c for c, _ in _V1_STAGES]
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, in_channels, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        x = self.stem(x)
        feats = [x]
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        pooled = global_pool(x)
        return self.fc(pooled), feature_dict(feats, pooled)


@register_model("mobilenetv1")
def mobilenetv1(num_classes: int = 1000, in_channels: int = 3) -> MobileNetV1:
    """ImageNet MobileNetV1 (the student of the ResNet-50 -> MobileNetV1 pair)."""
    return MobileNetV1(num_classes, in_channels)
