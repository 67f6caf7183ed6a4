"""Weight diagnostics: how the per-sample weights behave during training.

Every step the engine hands the task's per-sample payload (weights w, entropies H_t and H_s in nats,
unweighted distillation loss, target class; each (N,)) to ``Diagnostics.add``; every ``diag_every``
optimiser steps ``flush`` summarises the window of steps since the last flush:

- quantiles 0.05 / 0.25 / 0.5 / 0.75 / 0.95 (and the mean) of w, H_t and H_s,
- effective sample size ESS = (sum w)^2 / (N sum w^2) in (0, 1] (1: uniform weights),
- Pearson correlation of w with the per-sample loss,
- per-class mean weight (classes present in the window),

to ``diagnostics.csv`` (one row per flush), ``class_weights.csv`` (step, class, mean_weight, count),
TensorBoard, and ``diagnostics/samples-eXXXX.npz`` per epoch: up to ``samples`` evenly spaced raw
samples per flush (arrays step, weights, h_t, h_s, per_sample, target) for histograms and scatter plots.
Nothing here draws random numbers, so diagnostics never change a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eakd.engine.files import atomic_open
from eakd.engine.logs import CsvLog

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SHORT = {"weights": "w", "h_t": "h_t", "h_s": "h_s"}
SAMPLE_KEYS = ("weights", "h_t", "h_s", "per_sample", "target")


def effective_sample_size(w: Tensor) -> float:
    """(sum w)^2 / (N * sum w^2) for weights w (N,): 1 for equal weights, 1/N for one nonzero weight."""
    w = w.double()
    denom = w.numel() * (w * w).sum()
    return float(w.sum() ** 2 / denom) if denom > 0 else float("nan")


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two (N,) tensors; NaN when either is constant."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denom = a.norm() * b.norm()
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def class_means(w: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class mean of w (N,) over integer targets (N,): (classes (C',), means (C',), counts (C',))."""
    classes, inverse, counts = torch.unique(target, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(classes), dtype=torch.float64, device=w.device).index_add_(0, inverse, w.double())
    return classes, sums / counts, counts


def summarize(payload: dict[str, Tensor]) -> dict[str, float]:
    """Scalars of one window: ``{w,h_t,h_s}_q05 .. _q95`` and ``_mean``, ``ess``, ``corr_w_loss``, ``n``."""
    stats: dict[str, float] = {}
    n = 0
    for key, short in SHORT.items():
        if key not in payload:
            continue
        x = payload[key].double()
        n = x.numel()
        qs = torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64, device=x.device))
        stats.update({f"{short}_q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs, strict=True)})
        stats[f"{short}_mean"] = float(x.mean())
    if "weights" in payload:
        stats["ess"] = effective_sample_size(payload["weights"])
        if "per_sample" in payload:
            stats["corr_w_loss"] = pearson(payload["weights"], payload["per_sample"])
    stats["n"] = float(n)
    return stats


class Diagnostics:
    """Collects per-step payloads and writes the summaries described in the module docstring.

    run_dir: where the files go. samples: raw samples kept per flush. writer: a TensorBoard
    SummaryWriter or None. start_step: the optimiser step a resumed run starts from (later rows are cut).
    """

    def __init__(
        self, run_dir: str | Path, samples: int = 256, writer: Any = None, start_step: int = 0
    ) -> None:
        self.run_dir = Path(run_dir)
        self.samples = samples
        self.writer = writer
        self.csv = CsvLog(self.run_dir / "diagnostics.csv", "step", start_step)
        self.class_csv = CsvLog(self.run_dir / "class_weights.csv", "step", start_step)
        self.window: list[dict[str, Tensor]] = []
        self.kept: list[dict[str, np.ndarray]] = []

    def add(self, payload: dict[str, Tensor] | None) -> None:
        """Keep one step's per-sample payload (detached; stays on its device until the flush)."""
        if payload:
            self.window.append({k: v.detach() for k, v in payload.items()})

    def flush(self, step: int, epoch: float) -> dict[str, float] | None:
        """Summarise and log the window (None if empty); returns the scalar statistics."""
        if not self.window:
            return None
        keys = set.intersection(*(set(p) for p in self.window))
        payload = {k: torch.cat([p[k].reshape(-1) for p in self.window]) for k in keys}
        self.window = []
        stats = summarize(payload)
        self.csv.append({"step": step, "epoch": round(epoch, 4), **stats})
        if "weights" in payload and "target" in payload:
            classes, means, counts = class_means(payload["weights"], payload["target"])
            self.class_csv.append(
                *(
                    {"step": step, "class": c, "mean_weight": m, "count": k}
                    for c, m, k in zip(classes.tolist(), means.tolist(), counts.tolist(), strict=True)
                )
            )
            if self.writer is not None:
                self.writer.add_histogram("diag/class_mean_weight", means.cpu(), step)
        if self.writer is not None:
            for name, value in stats.items():
                self.writer.add_scalar(f"diag/{name}", value, step)
            for key, short in SHORT.items():
                if key in payload:
                    self.writer.add_histogram(f"diag/{short}", payload[key].float().cpu(), step)
        n = next(iter(payload.values())).numel()
        idx = torch.linspace(0, n - 1, min(self.samples, n)).round().long()
        kept = {k: payload[k][idx.to(payload[k].device)].cpu().numpy() for k in SAMPLE_KEYS if k in payload}
        kept["step"] = np.full(len(idx), step, dtype=np.int64)
        self.kept.append(kept)
        return stats

    def end_epoch(self, epoch: int) -> None:
        """Write the raw samples kept in epoch ``epoch`` (1-based) to ``diagnostics/samples-eXXXX.npz``."""
        if not self.kept:
            return
        keys = set.intersection(*(set(k) for k in self.kept))
        arrays = {k: np.concatenate([part[k] for part in self.kept]) for k in sorted(keys)}
        with atomic_open(self.run_dir / "diagnostics" / f"samples-e{epoch:04d}.npz", "wb") as f:
            np.savez_compressed(f, **arrays)
        self.kept = []
