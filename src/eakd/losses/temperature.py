"""CTKD (curriculum temperature KD, Li et al., AAAI 2023): a learnable distillation temperature.

The temperature module is trained adversarially: it sees the distillation loss through a gradient
reversal layer, so gradient descent on its parameters *increases* the loss (harder temperatures) while
the student decreases it. The reversal strength lambda follows a cosine curriculum from 0 upwards.
Temperatures are kept in [t_min, t_max] = [1, 21] by sigmoid scaling, as CTKD does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from eakd.checks import check_positive
from eakd.losses.logit import dkd_loss, kd_loss
from eakd.losses.registry import register_loss


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity forward; the backward pass multiplies the incoming gradient by -lam. Any shape."""
    return _GradReverse.apply(x, lam)


def ctkd_lambda(epoch: float, max_lambda: float = 1.0, start: float = 0.0, end: float = 10.0) -> float:
    """CTKD's cosine curriculum for the reversal strength: 0 until ``start``, max_lambda from ``end`` on.

    lambda = max_lambda * (1 - cos(pi * r)) / 2 with r = (epoch - start) / (end - start) clipped to [0, 1];
    end <= start gives a step to max_lambda at ``start``.
    """
    if end <= start:
        return max_lambda if epoch >= start else 0.0
    r = min(max((epoch - start) / (end - start), 0.0), 1.0)
    return max_lambda * 0.5 * (1.0 - math.cos(math.pi * r))


def _logit(fraction: float) -> float:
    return math.log(fraction / (1.0 - fraction))


class GlobalTemperature(nn.Module):
    """One learnable temperature T = t_min + (t_max - t_min) * sigmoid(p), starting at ``init``.

    forward(student_logits, teacher_logits) -> 0-dim T (the logits only fix device and dtype).
    """

    def __init__(self, init: float = 4.0, t_min: float = 1.0, t_max: float = 21.0) -> None:
        super().__init__()
        if not t_min < init < t_max:
            raise ValueError(f"init temperature must lie strictly inside ({t_min}, {t_max}), got {init}")
        check_positive("t_min", t_min)
        self.t_min, self.t_max = t_min, t_max
        self.p = nn.Parameter(torch.tensor(_logit((init - t_min) / (t_max - t_min))))

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return self.t_min + (self.t_max - self.t_min) * torch.sigmoid(self.p)


class InstanceTemperature(nn.Module):
    """Per-sample temperature from a small MLP over the concatenated [student, teacher] logits.

    forward(student_logits (N, K), teacher_logits (N, K)) -> (N,) temperatures in (t_min, t_max). The
    output layer starts at zero weights, so every sample starts at ``init`` and per-sample deviations are
    learned. The logits are detached: the student gets no gradient through the temperature predictor,
    only through the loss the temperature shapes.
    """

    def __init__(
        self, num_classes: int, hidden: int = 256, init: float = 4.0, t_min: float = 1.0, t_max: float = 21.0
    ) -> None:
        super().__init__()
        if not t_min < init < t_max:
            raise ValueError(f"init temperature must lie strictly inside ({t_min}, {t_max}), got {init}")
        check_positive("t_min", t_min)
        self.t_min, self.t_max = t_min, t_max
        self.mlp = nn.Sequential(nn.Linear(2 * num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.constant_(self.mlp[2].bias, _logit((init - t_min) / (t_max - t_min)))

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        x = torch.cat([student_logits.detach(), teacher_logits.detach()], dim=-1).float()
        return self.t_min + (self.t_max - self.t_min) * torch.sigmoid(self.mlp(x).squeeze(-1))


@register_loss("ctkd")
class CTKD(nn.Module):
    """KD or DKD at a learnable temperature trained through gradient reversal; returns (N,) per sample.

    mode: "global" (one temperature) or "instance" (per sample; needs ``num_classes``). base: "kd" or
    "dkd" (with ``alpha``, ``beta``). init_temperature, t_min, t_max: start and range of the temperature
    (CTKD's own global init corresponds to about 15.6). max_lambda, lambda_start, lambda_end: the cosine
    curriculum of the reversal strength over epochs (``ctkd_lambda``).

    The reversal strength is state: ``lam`` (starts at the curriculum's value at epoch 0). The training
    loop calls ``set_epoch(epoch)`` once per epoch (fractional epochs are fine) to advance it. The
    temperature's parameters must be in the optimizer with the student's. ``last_temperature`` holds the
    detached temperature of the latest call, for logging. The target is needed even for base "kd".
    """

    def __init__(
        self,
        mode: str = "global",
        base: str = "kd",
        init_temperature: float = 4.0,
        t_min: float = 1.0,
        t_max: float = 21.0,
        num_classes: int | None = None,
        hidden: int = 256,
        max_lambda: float = 1.0,
        lambda_start: float = 0.0,
        lambda_end: float = 10.0,
        alpha: float = 1.0,
        beta: float = 8.0,
    ) -> None:
        super().__init__()
        if base not in ("kd", "dkd"):
            raise ValueError(f"CTKD base loss must be 'kd' or 'dkd', got {base!r}")
        self.temperature: nn.Module
        if mode == "global":
            self.temperature = GlobalTemperature(init_temperature, t_min, t_max)
        elif mode == "instance":
            if num_classes is None:
                raise ValueError("CTKD mode 'instance' needs num_classes")
            self.temperature = InstanceTemperature(num_classes, hidden, init_temperature, t_min, t_max)
        else:
            raise ValueError(f"CTKD mode must be 'global' or 'instance', got {mode!r}")
        self.base, self.alpha, self.beta = base, alpha, beta
        self.max_lambda, self.lambda_start, self.lambda_end = max_lambda, lambda_start, lambda_end
        self.set_epoch(0.0)
        self.last_temperature: torch.Tensor | None = None

    def set_epoch(self, epoch: float) -> None:
        """Advance the reversal strength ``lam`` to the curriculum's value at ``epoch``."""
        self.lam = ctkd_lambda(epoch, self.max_lambda, self.lambda_start, self.lambda_end)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor,
        defer: bool = False,
    ) -> torch.Tensor:
        """student_logits, teacher_logits (N, K), target (N,) -> (N,) float32 losses; defer: as in
        ``kd_loss``."""
        t = grad_reverse(self.temperature(student_logits, teacher_logits), self.lam)
        self.last_temperature = t.detach()
        if self.base == "kd":
            return kd_loss(student_logits, teacher_logits, t, defer=defer)
        return dkd_loss(student_logits, teacher_logits, target, self.alpha, self.beta, t, defer=defer)
