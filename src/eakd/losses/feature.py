"""Per-sample feature distillation losses: FitNet and ReviewKD (with its HCL).

Features come as the model zoo's dicts (``eakd.vision.models.common``): ``feats["feats"]`` is the list of
maps (N, C_i, H_i, W_i), stem first; ``feats["pooled"]`` the (N, D) pooled vector; ``feats["preact_feats"]``
the stage maps before their last ReLU where a model provides them. The teacher's maps are detached.
EA weights these losses per sample with weights computed from the logits (EA-KD, section 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eakd.checks import check_same_device
from eakd.losses.registry import register_loss


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """x (N, C, H, W) -> (N, C, *size): adaptive average pooling to shrink, nearest interpolation else."""
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="nearest")


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over all but the first dim, in float32: (N, ...) -> (N,)."""
    return (a.float() - b.float()).square().flatten(1).mean(dim=1)


def _check_batch(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    """Student and teacher ``what`` (N, ...) must hold the same N samples on one device."""
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher {what} differ in batch size: student has {student.shape[0]} samples, "
            f"teacher has {teacher.shape[0]}"
        )
    check_same_device(f"student {what}", student, f"teacher {what}", teacher)


def _feature_map(feats: Any, key: str, index: int, channels: int, who: str) -> torch.Tensor:
    """``feats[key][index]``, checked to be (N, channels, H, W)."""
    if key not in feats:
        raise ValueError(f"{who} features have no {key!r}; available: {sorted(feats)}")
    maps = feats[key]
    if not -len(maps) <= index < len(maps):
        raise ValueError(f"{who} {key!r} has {len(maps)} maps; index {index} is out of range")
    x = maps[index]
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{who} {key}[{index}] has shape {tuple(x.shape)}, expected (N, {channels}, H, W)")
    return x


@register_loss("fitnet")
class FitNet(nn.Module):
    """FitNet hint loss: a 1x1 conv + BN connector maps the student's hint map to the teacher's channels.

    Per sample: mean over (C, H, W) of (connector(f_s) - f_t)^2 -> (N,), with f = feats["feats"][hint_layer]
    of each model (index 0 is the stem). A spatial size mismatch is resolved by resizing the connector's
    output to the teacher's size (average pooling to shrink, nearest interpolation to grow).
    """

    def __init__(self, student_channels: int, teacher_channels: int, hint_layer: int = 2) -> None:
        super().__init__()
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.hint_layer = hint_layer
        self.connector = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, 1, bias=False), nn.BatchNorm2d(teacher_channels)
        )

    def forward(self, student_feats: Any, teacher_feats: Any) -> torch.Tensor:
        fs = _feature_map(student_feats, "feats", self.hint_layer, self.student_channels, "student")
        ft = _feature_map(teacher_feats, "feats", self.hint_layer, self.teacher_channels, "teacher")
        _check_batch(fs, ft, f"feats[{self.hint_layer}]")
        return _mse(_resize(self.connector(fs), ft.shape[-2:]), ft.detach())


def hcl_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """ReviewKD's hierarchical context loss per sample, summed over the feature levels: -> (N,) float32.

    Each level is a pair of equal-shape maps (N, C, H, W). Its loss is the per-sample MSE at full
    resolution (weight 1) plus the MSE of both maps average-pooled to those of the sizes 4, 2, 1 that are
    below H (weights 1/2, 1/4, 1/8 in the order used), divided by the sum of the weights used.
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"hcl_loss needs equally many maps, got {len(student_maps)} and {len(teacher_maps)}")
    total = torch.zeros((), device=student_maps[0].device)
    for fs, ft in zip(student_maps, teacher_maps, strict=True):
        if fs.shape != ft.shape:
            raise ValueError(f"hcl_loss level shapes differ: {tuple(fs.shape)} vs {tuple(ft.shape)}")
        check_same_device("student maps", fs, "teacher maps", ft)
        loss, weight, norm = _mse(fs, ft), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= fs.shape[-2]:
                continue
            weight /= 2.0
            loss = loss + weight * _mse(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            norm += weight
        total = total + loss / norm
    return total


class ABF(nn.Module):
    """ReviewKD's attention-based fusion of one student level with the fused output of the level below.

    forward(x (N, in_channels, H, W), residual (N, mid_channels, h, w) | None, out_size (H', W')) ->
    (out (N, out_channels, H', W'), fused (N, mid_channels, H', W')); ``fused`` is the next residual.
    With ``fuse``, the residual is resized to (H, W) and mixed in by two per-pixel sigmoid attention maps.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.out = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        for conv in (self.reduce[0], self.out[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_size: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the residual of the level below")
            residual = _resize(residual, x.shape[-2:])
            att = self.attention(torch.cat([x, residual], dim=1))
            x = x * att[:, :1] + residual * att[:, 1:]
        x = _resize(x, out_size)
        return self.out(x), x


@register_loss("reviewkd")
class ReviewKD(nn.Module):
    """ReviewKD (knowledge review): ABF fusion of the student's levels, deepest first, then HCL per sample.

    Levels are the stage maps after the stem, ``feats[key][1:]``, then the pooled vector as a 1x1 map;
    in_channels / out_channels list their channels for student / teacher (e.g. ResNet8x4 -> ResNet32x4
    on CIFAR: [64, 128, 256, 256] both). mid_channel: width of the fusion path. student_key /
    teacher_key: which maps to use ("feats" or "preact_feats"; ReviewKD uses the teacher's
    pre-activation maps). Each fused level is resized to the teacher's size at that level.
    Returns (N,); the warm-up over the first epochs is DistillLoss's ``warmup_epochs``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        mid_channel: int,
        student_key: str = "feats",
        teacher_key: str = "preact_feats",
    ) -> None:
        super().__init__()
        if len(in_channels) != len(out_channels) or not in_channels:
            raise ValueError(f"in_channels {list(in_channels)} and out_channels {list(out_channels)} differ")
        self.in_channels, self.out_channels = list(in_channels), list(out_channels)
        self.student_key, self.teacher_key = student_key, teacher_key
        last = len(in_channels) - 1
        self.abfs = nn.ModuleList(
            ABF(c_in, mid_channel, c_out, fuse=i < last)
            for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels, strict=True))
        )

    def _levels(self, feats: Any, key: str, channels: list[int], who: str) -> list[torch.Tensor]:
        """Stage maps after the stem, then the pooled vector as (N, D, 1, 1); checked against ``channels``."""
        if key not in feats:
            raise ValueError(f"{who} features have no {key!r}; available: {sorted(feats)}")
        n_maps = len(feats[key]) - 1
        if n_maps + 1 != len(channels):
            raise ValueError(
                f"{who} gives {n_maps} stage maps after the stem plus the pooled vector, "
                f"but {len(channels)} channel counts were configured: {channels}"
            )
        maps = [_feature_map(feats, key, i + 1, c, who) for i, c in enumerate(channels[:-1])]
        pooled = feats["pooled"]
        if pooled.dim() != 2 or pooled.shape[1] != channels[-1]:
            raise ValueError(
                f"{who} pooled vector has shape {tuple(pooled.shape)}, expected (N, {channels[-1]})"
            )
        return [*maps, pooled[:, :, None, None]]

    def forward(self, student_feats: Any, teacher_feats: Any) -> torch.Tensor:
        xs = self._levels(student_feats, self.student_key, self.in_channels, "student")
        ts = [t.detach() for t in self._levels(teacher_feats, self.teacher_key, self.out_channels, "teacher")]
        for level, (x, t) in enumerate(zip(xs, ts, strict=True)):
            _check_batch(x, t, f"level-{level} features")
        outs: list[torch.Tensor] = []
        residual = None
        for x, t, abf in zip(reversed(xs), reversed(ts), reversed(self.abfs), strict=True):
            out, residual = abf(x, residual, t.shape[-2:])
            outs.append(out)
        return hcl_loss(outs[::-1], ts)
