"""Checkpoints written atomically (temp file + ``os.replace``), found by position, read with weights_only.

A training checkpoint ``checkpoints/epoch-0010.pt`` (after 10 epochs) or ``epoch-0010-step-00001234.pt``
(mid-epoch, ``train.ckpt_every_steps``) holds plain data only: the ``Progress`` fields (``epoch``
completed, ``batch`` micro-batches done of the next epoch, ``step`` optimiser steps, ``best``, ``last``,
times), ``config`` (the run's config as a mapping), ``model``, ``optimizer``, ``scheduler``, ``scaler``
(None without fp16) state dicts, ``rng`` (a list of per-process RNG states) and ``epoch_sums`` (per
process, the loss sums of the epoch so far). Every file that cannot be a checkpoint is refused with one
ValueError (FileNotFoundError when missing) naming the file and what is wrong.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor, nn

from eakd.engine.files import atomic_open

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^epoch-(\d+)(?:-step-(\d+))?\.pt$")
TRAINING_KEYS = ("config", "model", "optimizer", "scheduler", "scaler", "rng", "epoch_sums")


def checkpoint_path(run_dir: str | Path, epoch: int, step: int | None = None) -> Path:
    """``run_dir/checkpoints/epoch-XXXX.pt`` after ``epoch`` completed epochs, or
    ``epoch-XXXX-step-XXXXXXXX.pt`` for a mid-epoch checkpoint at optimiser step ``step``."""
    suffix = "" if step is None else f"-step-{step:08d}"
    return Path(run_dir) / CKPT_DIR / f"epoch-{epoch:04d}{suffix}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's training checkpoints, oldest first (by completed epochs, then step)."""
    folder = Path(run_dir) / CKPT_DIR
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), int(m.group(2) or 0), p) for p in folder.iterdir() if (m := _NAME.match(p.name))
    ]
    return [p for _, _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest training checkpoint in ``run_dir``, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path.tmp`` then rename over ``path``: a reader never sees a half-written file."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` training checkpoints (keep <= 0 keeps all)."""
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink()


def _reason(err: Exception) -> str:
    """torch.load's error in one short clause, without its advice to load with ``weights_only=False`` (never
    good advice for a file one did not write: unpickling runs code)."""
    text = " ".join(str(err).split())
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"it holds Python objects{what} besides tensors and plain data, which eakd never unpickles"
    return text.split(". ")[0] or type(err).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (plain tensors and Python data only).

    Raises FileNotFoundError when ``path`` does not exist and ValueError naming the file when it is a
    directory, empty, unreadable (truncated, corrupt, not a torch file, a pickle of code) or not a mapping.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes)")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch.load raises many types (EOFError, UnpicklingError, RuntimeError...)
        raise ValueError(
            f"checkpoint {path} cannot be read (truncated, corrupt or not a torch checkpoint): {_reason(err)}"
        ) from err
    if not isinstance(ck, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ck).__name__}, not a mapping of saved state")
    return ck


def load_weights(module: nn.Module, state: Any, path: str | Path) -> None:
    """``module.load_state_dict(state)``, a mismatch raised as one ValueError line naming ``path``."""
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} holds no model weights (a mapping of names to tensors)")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:])
        raise ValueError(f"checkpoint {path} does not fit the model: {detail[:400]}") from err


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
    """Where a run stands; saved in every checkpoint. epoch: epochs completed; batch: micro-batches done
    of epoch ``epoch`` (0 at an epoch boundary); step: optimiser steps; best: {"metric", "value",
    "epoch", "metrics"}; last: the latest evaluation's metrics; train_time_s: seconds of training."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    train_time_s: float = 0.0
    samples_per_s: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)


def save_training_state(
    path: Path,
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    progress: Progress,
    config: dict[str, Any],
    epoch_sums: dict[str, Tensor] | None = None,
) -> None:
    """All processes call this (their RNG states and epoch sums are gathered); the main process writes
    ``path``. config: the run's config mapping (compared on resume). epoch_sums: this process's loss
    sums of the epoch so far (mid-epoch checkpoints), None at an epoch boundary."""
    sums = {k: v.detach().cpu() for k, v in (epoch_sums or {}).items()}
    per_process = gather_object([(rng_state(), sums)])
    if accelerator.is_main_process:
        ck = {
            **asdict(progress),
            "config": config,
            "model": accelerator.unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": None if accelerator.scaler is None else accelerator.scaler.state_dict(),
            "rng": [rng for rng, _ in per_process],
            "epoch_sums": [s for _, s in per_process],
        }
        atomic_save(ck, path)
    accelerator.wait_for_everyone()


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint of this engine, or ValueError naming the file and the keys it lacks."""
    ck = load_checkpoint(path)
    missing = [k for k in (*(f.name for f in fields(Progress)), *TRAINING_KEYS) if k not in ck]
    if missing:
        raise ValueError(
            f"checkpoint {path} is not an eakd training checkpoint (missing {', '.join(missing)}); "
            "resume takes a checkpoints/epoch-*.pt file of a run"
        )
    return ck


def load_training_state(
    ck: dict[str, Any], path: Path, accelerator: Accelerator, model: nn.Module, optimizer: Any, scheduler: Any
) -> tuple[Progress, dict[str, Tensor]]:
    """Restore the training checkpoint ``ck`` (read from ``path``): model, optimiser, schedule, scaler and
    this process's RNG states. Returns the progress and this process's epoch sums (on the device)."""
    load_weights(accelerator.unwrap_model(model), ck["model"], path)
    try:
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path}: its optimiser state does not fit this run: {err}") from err
    if accelerator.scaler is not None and ck["scaler"] is not None:
        accelerator.scaler.load_state_dict(ck["scaler"])
    own = accelerator.process_index if len(ck["rng"]) == accelerator.num_processes else 0
    set_rng_state(ck["rng"][own])
    sums = {k: v.to(accelerator.device) for k, v in ck["epoch_sums"][own].items()}
    return Progress(**{f.name: ck[f.name] for f in fields(Progress)}), sums
