"""Optimisers (SGD, AdamW) and learning-rate schedules (step, cosine, constant) with linear warm-up.

Schedules are evaluated per optimiser step, from the fractional epoch ``step / steps_per_epoch``, so a
milestone at epoch 150 drops the rate at the first step of epoch 150, exactly like a per-epoch schedule,
while warm-up and cosine move smoothly within epochs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import torch
from torch import nn

from eakd.engine.config import OptimConfig, ScheduleConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD(lr, momentum, weight_decay, nesterov) or AdamW(lr, betas, weight_decay) over ``params``."""
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    if len(cfg.betas) != 2:
        raise ValueError(f"optim.betas must hold two numbers, got {cfg.betas}")
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), weight_decay=cfg.weight_decay
    )


def lr_factor(step: int, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int, base_lr: float) -> float:
    """Multiplier of the peak lr for optimiser step ``step`` (0-based) of a run of ``epochs`` epochs.

    Warm-up: (step + 1) / warmup_steps for the first warmup_steps = round(warmup_epochs * steps_per_epoch)
    steps. Then step: gamma ** (milestones <= epoch); cosine: min_lr/base_lr + (1 - min_lr/base_lr) *
    (1 + cos(pi * progress)) / 2 with progress in [0, 1] over the remaining steps; constant: 1.
    """
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        epoch = step / steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    total = max(epochs * steps_per_epoch - warmup_steps, 1)
    progress = min((step - warmup_steps) / total, 1.0)
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per optimiser step with ``lr_factor``; its state is the step count."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    base_lr = optimizer.param_groups[0]["lr"]
    fn = partial(lr_factor, cfg=cfg, steps_per_epoch=steps_per_epoch, epochs=epochs, base_lr=base_lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
