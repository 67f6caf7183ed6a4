"""COCO-style box AP (AP@[.5:.95], AP50, AP75, AP by object size) through torchmetrics'
MeanAveragePrecision (pycocotools backend)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

Target = dict[str, torch.Tensor]


def box_ap(predictions: list[Target], targets: list[Target]) -> dict[str, float]:
    """COCO box AP of predictions {"boxes" (K, 4) xyxy, "scores" (K,), "labels" (K,)} against targets
    {"boxes" (M, 4) xyxy, "labels" (M,)}, one dict per image. Returns fractions in [0, 1]:
    {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"} (COCO's sizes: box area < 32^2, 32^2..96^2,
    > 96^2 pixels); -1 where the ground truth holds no box (of that size) at all (COCO's convention).
    """
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    metric.update(
        [{k: p[k].detach().cpu() for k in ("boxes", "scores", "labels")} for p in predictions],
        [{k: t[k].detach().cpu() for k in ("boxes", "labels")} for t in targets],
    )
    res = metric.compute()
    names = {"AP": "map", "AP50": "map_50", "AP75": "map_75"}
    names |= {f"AP_{size}": f"map_{size}" for size in ("small", "medium", "large")}
    return {name: float(res[key]) for name, key in names.items()}


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    loader: Iterable[tuple[list[torch.Tensor], list[Target]]],
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Run a torchvision detector in eval mode over ``loader`` (batches of image lists and target lists)
    and return its COCO box AP (see ``box_ap``); the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    preds: list[Target] = []
    gts: list[Target] = []
    try:
        for images, targets in loader:
            preds += model([im.to(device) for im in images])
            gts += targets
    finally:
        model.train(was_training)
    return box_ap(preds, gts)
