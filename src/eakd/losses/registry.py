"""Distillation losses by name, so configs can name them and users can add their own.

A registered loss is either a function or an ``nn.Module`` class (for losses with learnable parts,
such as CTKD's temperature or ReviewKD's fusion). It is called with keyword inputs chosen from
``student_logits, teacher_logits, target, student_feats, teacher_feats`` (only those its signature
names) and returns unreduced per-sample values: a tensor (N,) / (B, T) / (R,), or a dict of named
terms, each either per-sample (weighted) or a 0-dim batch-level term (not weighted). A loss may also take
``defer: bool``: ``DistillLoss`` passes True in training loops (``sync_checks=False``), and the loss's
value checks then neither read back to the host nor raise (``eakd.checks``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eakd.registry import Registry

LOSSES: Registry[Callable[..., Any]] = Registry("distillation loss")
register_loss = LOSSES.register
get_loss = LOSSES.get
