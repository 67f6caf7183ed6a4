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

LOSSES: dict[str, Callable[..., Any]] = {}


def register_loss(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a loss function or module class under ``name``."""

    def add(obj: Callable[..., Any]) -> Callable[..., Any]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered (by {LOSSES[name]!r})")
        LOSSES[name] = obj
        return obj

    return add


def get_loss(name: str) -> Callable[..., Any]:
    """The registered loss called ``name``; a ValueError lists the known names otherwise."""
    if name not in LOSSES:
        raise ValueError(f"unknown distillation loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]
