"""Small models: Fashion-MNIST CNN teacher/student (28x28, 1 channel) and a batch-norm-free MLP."""

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eakd.vision.models.common import ModelOutput, conv_bn, feature_dict, global_pool, init_weights
from eakd.vision.models.registry import register_model


class SmallCNN(nn.Module):
    """conv-BN-ReLU stem at full resolution, then stages of ``convs`` conv-BN-ReLU after a 2x2 max-pool.

    Args:
        widths: stem channels then each stage's channels; stage_channels == widths.
        convs: 3x3 convolutions per stage.
    """

    def __init__(self, widths: list[int], convs: int, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, widths[0])
        self.stages = nn.ModuleList(
            nn.Sequential(*(conv_bn(c_in if i == 0 else c_out, c_out) for i in range(convs)))
            for c_in, c_out in pairwise(widths)
        )
        self.fc = nn.Linear(widths[-1], num_classes)
        self.stage_channels = list(widths)
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, in_channels, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        x = self.stem(x)
        feats = [x]
        for stage in self.stages:
            x = stage(F.max_pool2d(x, 2))
            feats.append(x)
        pooled = global_pool(x)
        return self.fc(pooled), feature_dict(feats, pooled)


@register_model("fmnist_cnn")
def fmnist_cnn(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """Fashion-MNIST teacher: 16 (28x28) -> 48 (14) -> 96 (7) -> 192 (3) channels, 217k parameters.

    Narrow at full resolution, wide where it is cheap: a training step costs ~4x less on a CPU than two
    convolutions per stage at 32/64/128 channels with a similar parameter count.
    """
    return SmallCNN([16, 48, 96, 192], 1, num_classes, in_channels)


@register_model("fmnist_tiny")
def fmnist_tiny(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """Fashion-MNIST student: 12 (28x28) -> 24 (14) -> 48 (7) channels, 13.7k parameters (16x smaller)."""
    return SmallCNN([12, 24, 48], 1, num_classes, in_channels)


class MLP(nn.Module):
    """Flatten -> (Linear -> ReLU) per hidden layer -> Linear; no batch norm (exact DDP equality tests).

    feats["feats"] are the hidden activations (N, hidden_i); stage_channels == hidden.
    """

    def __init__(
        self, in_features: int = 784, hidden: tuple[int, ...] = (256,), num_classes: int = 10
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.fc = nn.Linear(sizes[-1], num_classes)
        self.stage_channels = list(hidden)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, ...) with in_features values per sample -> logits (N, num_classes), feats."""
        x = torch.flatten(x, 1)
        feats = []
        for layer in self.layers:
            x = F.relu(layer(x))
            feats.append(x)
        return self.fc(x), feature_dict(feats, x)


@register_model("mlp")
def mlp(
    num_classes: int = 10,
    in_channels: int = 1,
    in_features: int | None = None,
    hidden: tuple[int, ...] = (256,),
) -> MLP:
    """Batch-norm-free MLP; ``in_features`` = C*H*W of the input (default: in_channels x 28 x 28)."""
    return MLP(in_features or in_channels * 28 * 28, tuple(hidden), num_classes)
