"""VGG with batch norm, CIFAR layout of the KD literature: vgg8, vgg11, vgg13, vgg16, vgg19.

Five blocks of 3x3 conv-BN-ReLU; max-pool after blocks 0-2, blocks 3 and 4 share 1/8 resolution; global
average pool and one linear layer. Parameter names follow the published CIFAR-100 teacher checkpoints;
``preact_feats`` are mdistiller's (block 0 after its ReLU, blocks 1-4 before it).
"""

import torch.nn.functional as F
from torch import Tensor, nn

from eakd.vision.models.common import ModelOutput, feature_dict, global_pool, init_weights
from eakd.vision.models.registry import register_model

_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(in_ch: int, widths: list[int]) -> nn.Sequential:
    """conv3x3(bias)-BN-ReLU repeated, without the last ReLU (applied by the caller)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_ch = w
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG-BN with blocks ``block0..block4`` and a linear ``classifier``."""

    def __init__(self, config: list[list[int]], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.stage_channels = [widths[-1] for widths in config]
        in_chs = [in_channels, *self.stage_channels[:-1]]
        for i, (c, widths) in enumerate(zip(in_chs, config, strict=True)):
            self.add_module(f"block{i}", _block(c, widths))
        self.classifier = nn.Linear(self.stage_channels[-1], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, in_channels, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        feats, preacts = [], []
        for i in range(5):
            if 1 <= i <= 3:
                x = F.max_pool2d(x, 2)
            pre = getattr(self, f"block{i}")(x)
            x = F.relu(pre)
            preacts.append(pre if i > 0 else x)  # mdistiller: the stem's map after its ReLU
            feats.append(x)
        pooled = global_pool(x)
        return self.classifier(pooled), feature_dict(feats, pooled, preacts)


def _register_vgg(name: str) -> None:
    def build(num_classes: int = 100, in_channels: int = 3) -> VGG:
        return VGG(_CONFIGS[name], num_classes, in_channels)

    build.__doc__ = f"{name} with batch norm, CIFAR layout."
    register_model(name)(build)


for _name in _CONFIGS:
    _register_vgg(_name)
