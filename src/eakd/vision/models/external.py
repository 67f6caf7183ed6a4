"""torchvision (``tv:<name>``) and timm (``timm:<name>``) models behind the zoo's (logits, feats) contract."""

import importlib

import torch
import torchvision
from torch import Tensor, nn

from eakd.vision.models.common import ModelOutput, feature_dict, global_pool

_TV_RESNETS = ("resnet", "resnext", "wide_resnet")
_TV_FEATURE_NETS = ("mobilenet_v2", "mobilenet_v3", "efficientnet")


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet/ResNeXt/Wide-ResNet whose modules are adopted as they are (same state-dict keys).

    feats: stem (after max-pool, 1/4 resolution) and layer1..layer4 (1/4, 1/8, 1/16, 1/32).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        for name, child in net.named_children():
            self.add_module(name, child)
        self.stage_channels = [self.bn1.num_features]
        for i in range(1, 5):
            last_block = getattr(self, f"layer{i}")[-1]
            norms = [m for m in last_block.modules() if isinstance(m, nn.BatchNorm2d)]
            self.stage_channels.append(norms[-1].num_features)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, 3, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = [x]
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        pooled = global_pool(x)
        return self.fc(pooled), feature_dict(feats, pooled)


class TorchvisionFeatureNet(nn.Module):
    """A torchvision net made of ``features`` (nn.Sequential) and a ``classifier`` on the pooled vector
    (MobileNetV2/V3, EfficientNet), modules adopted as they are (same state-dict keys).

    feats: the output of the last ``features`` module at each resolution (1/2, 1/4, ..., 1/32).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.features: nn.Sequential = net.features
        self.classifier: nn.Module = net.classifier
        self.taps, self.stage_channels = _resolution_ends(self.features)

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, 3, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        feats = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.taps:
                feats.append(x)
        pooled = global_pool(x)
        return self.classifier(pooled), feature_dict(feats, pooled)


def _resolution_ends(features: nn.Sequential) -> tuple[list[int], list[int]]:
    """Indices of modules whose output is the last at its resolution, and their channels (one 64x64 probe)."""
    was_training = features.training
    features.eval()
    shapes = []
    with torch.no_grad():
        x = torch.zeros(1, 3, 64, 64)
        for module in features:
            x = module(x)
            shapes.append(x.shape)
    features.train(was_training)
    taps = [i for i in range(len(shapes)) if i == len(shapes) - 1 or shapes[i + 1][-1] < shapes[i][-1]]
    return taps, [shapes[i][1] for i in taps]


def torchvision_model(
    name: str, num_classes: int = 1000, pretrained: bool = False, in_channels: int = 3, **kw: object
) -> nn.Module:
    """Build ``torchvision.models.<name>`` (weights=None, or its DEFAULT weights when ``pretrained``).

    With ``pretrained`` torchvision downloads the weights (to ``$TORCH_HOME``) and requires
    num_classes=1000. Supported families: ResNet/ResNeXt/Wide-ResNet, MobileNetV2/V3, EfficientNet;
    3-channel input only.
    """
    if in_channels != 3:
        raise ValueError(f"tv:{name} takes 3-channel images, not in_channels={in_channels}")
    if name.startswith(_TV_RESNETS):
        wrapper: type[nn.Module] = TorchvisionResNet
    elif name.startswith(_TV_FEATURE_NETS):
        wrapper = TorchvisionFeatureNet
    else:
        raise ValueError(
            f"tv:{name} is not supported; use a torchvision ResNet/ResNeXt/Wide-ResNet, MobileNetV2/V3 or "
            "EfficientNet (e.g. tv:resnet18, tv:mobilenet_v2)"
        )
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    return wrapper(torchvision.models.get_model(name, weights=weights, num_classes=num_classes, **kw))


class TimmModel(nn.Module):
    """A timm model (timm >= 1.0) under ``self.net``.

    feats: ``forward_intermediates`` outputs (one per ``feature_info`` entry, NCHW); pooled: the head's
    pre-logits vector; logits: ``forward_head`` (e.g. the mean of DeiT's two heads in eval mode).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not hasattr(net, "forward_intermediates"):
            raise ValueError(f"{type(net).__name__} has no forward_intermediates (needs timm >= 1.0)")
        self.net = net
        self.stage_channels = [int(info["num_chs"]) for info in net.feature_info]

    def forward(self, x: Tensor) -> ModelOutput:
        """x: (N, 3, H, W) -> logits (N, num_classes), feats (see ``common``)."""
        final, feats = self.net.forward_intermediates(x)
        pooled = self.net.forward_head(final, pre_logits=True)
        return self.net.forward_head(final), feature_dict(list(feats), pooled)


def timm_model(
    name: str, num_classes: int = 1000, pretrained: bool = False, in_channels: int = 3, **kw: object
) -> nn.Module:
    """Build ``timm.create_model(name, ...)``; other keywords go to timm (e.g. ``pretrained_cfg_overlay=
    {"file": "weights.safetensors"}`` for local weights). Needs the timm package (not an eakd dependency)."""
    try:
        timm = importlib.import_module("timm")
    except ImportError as err:
        raise ImportError(f"timm:{name} needs the timm package, which is not installed here") from err
    net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kw)
    return TimmModel(net)
