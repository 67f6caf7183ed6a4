"""Pieces shared by the model zoo: the (logits, feats) output contract, weight init, conv-BN blocks.

Every model's ``forward(x)`` returns ``(logits, feats)``:

- ``logits``: (N, num_classes).
- ``feats["feats"]``: list of intermediate maps, the stem output first and then each stage's output,
  shapes (N, C_i, H_i, W_i) with ``C_i == model.stage_channels[i]`` ((N, C_i) for the MLP).
- ``feats["pooled"]``: (N, D) pooled penultimate vector, the classifier's input.
- ``feats["preact_feats"]`` (only where it costs nothing): the same stages taken before their final ReLU.
"""

from typing import Any

import torch
from torch import Tensor, nn

Features = dict[str, Any]
ModelOutput = tuple[Tensor, Features]


def feature_dict(feats: list[Tensor], pooled: Tensor, preact_feats: list[Tensor] | None = None) -> Features:
    """Pack stage features and the pooled vector into the zoo's ``feats`` dict."""
    out: Features = {"feats": feats, "pooled": pooled}
    if preact_feats is not None:
        out["preact_feats"] = preact_feats
    return out


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convolutions, unit/zero norm layers, zero linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def conv(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Conv without bias, 'same' padding (kernel // 2)."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)


def conv_bn(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm [-> ReLU]."""
    layers: list[nn.Module] = [conv(in_ch, out_ch, kernel, stride, groups), nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def global_pool(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C) spatial mean."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
