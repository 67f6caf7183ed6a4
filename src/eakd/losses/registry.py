"""Distillation losses by name, so configs can name them and users can add their own.

A registered loss is either a function or an ``nn.Module`` class (for losses with learnable parts,
such as CTKD's temperature or ReviewKD's fusion). It is called with keyword inputs chosen from
``student_logits, teacher_logits, target, student_feats, teacher_feats`` (only those its signature
names) and returns unreduced per-sample values: a tensor (N,) / (B, T) / (R,), or a dict of named
terms, each either per-sample (weighted) or a 0-dim batch-level term (not weighted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eakd.registry import Registry

LOSSES: Registry[Callable[..., Any]] = Registry("distillation loss")
register_loss = LOSSES.register
get_loss = LOSSES.get
