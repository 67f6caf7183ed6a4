"""Checkpoints written atomically (temp file + ``os.replace``), found by epoch, read with weights_only.

A training checkpoint ``checkpoints/epoch-0010.pt`` holds plain data only: the ``Progress`` fields
(``epoch`` completed, ``step`` optimiser steps, ``best``, ``last``, times), ``model``, ``optimizer``,
``scheduler``, ``scaler`` (None without fp16) state dicts and ``rng``, a list of per-process RNG states.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

if TYPE_CHECKING:
    from eakd.engine.config import Config

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^epoch-(\d+)\.pt$")


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """``run_dir/checkpoints/epoch-XXXX.pt`` for ``epoch`` completed epochs."""
    return Path(run_dir) / CKPT_DIR / f"epoch-{epoch:04d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's training checkpoints, oldest (fewest epochs) first."""
    folder = Path(run_dir) / CKPT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the most epochs in ``run_dir``, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path.tmp`` then rename over ``path``: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` training checkpoints (keep <= 0 keeps all)."""
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (plain tensors and Python data only)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA RNG states as weights_only-loadable data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by ``rng_state`` (CUDA states only where the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint. epoch: epochs completed; step: optimiser steps;
    best: {"metric", "value", "epoch", "metrics"}; last: the latest evaluation's metrics."""

    epoch: int = 0
    step: int = 0
    train_time_s: float = 0.0
    samples_per_s: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)


def save_training_state(
    path: Path, accelerator: Accelerator, model: nn.Module, optimizer: Any, scheduler: Any, progress: Progress
) -> None:
    """All processes call this (their RNG states are gathered); the main process writes ``path``."""
    rngs = gather_object([rng_state()])
    if accelerator.is_main_process:
        ck = {
            **asdict(progress),
            "model": accelerator.unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": None if accelerator.scaler is None else accelerator.scaler.state_dict(),
            "rng": rngs,
        }
        atomic_save(ck, path)
    accelerator.wait_for_everyone()


def load_training_state(
    path: Path, accelerator: Accelerator, model: nn.Module, optimizer: Any, scheduler: Any
) -> Progress:
    """Restore model, optimiser, schedule, scaler and this process's RNG states; returns the progress."""
    ck = load_checkpoint(path)
    accelerator.unwrap_model(model).load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if accelerator.scaler is not None and ck["scaler"] is not None:
        accelerator.scaler.load_state_dict(ck["scaler"])
    rngs = ck["rng"]
    set_rng_state(rngs[accelerator.process_index] if len(rngs) == accelerator.num_processes else rngs[0])
    return Progress(**{f.name: ck[f.name] for f in fields(Progress)})


def resolve_resume(cfg: Config) -> Path | None:
    """The checkpoint ``train.resume`` names: None for "none" (or "auto" without checkpoints)."""
    resume = cfg.train.resume
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(cfg.run_dir)
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"train.resume: checkpoint {path} does not exist")
    return path
