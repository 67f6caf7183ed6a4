"""Per-RoI weight log of a detection run: which RoIs does the weight policy emphasise?

Every ``every``-th training step, ``samples`` evenly spaced RoIs of that step's sampled RoIs go to
``roi_weights.csv`` in the run folder, one row each: ``epoch`` (fractional), ``weight`` (the policy's
weight as the loss used it), ``iou`` (the RoI's largest IoU with a ground-truth box of its image),
``teacher_maxprob`` (the teacher's largest class probability at temperature 1, background included),
``teacher_class`` (its argmax, 0 = background), ``label`` (the RoI's sampled label, 0 = background),
``h_t``, ``h_s`` (the entropies the policy computed, nats). ``eakd report`` draws weight against IoU and
against teacher_maxprob. A logged step reads its values back to the host once (as the engine's diagnostics
flush does); other steps cost nothing. No random numbers are drawn, so logging never changes a run.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from eakd.engine.logs import CsvLog

FILE = "roi_weights.csv"
COLUMNS = ("epoch", "weight", "iou", "teacher_maxprob", "teacher_class", "label", "h_t", "h_s")


def roi_rows(epoch: float, last: dict[str, torch.Tensor | None], samples: int) -> list[dict[str, object]]:
    """Rows for ``samples`` evenly spaced RoIs of a distiller's ``last`` (keys weights, iou, target,
    teacher_logits (R, C + 1), and h_t / h_s when the policy has them); [] without weights."""
    weights = last.get("weights")
    if weights is None or weights.numel() == 0:
        return []
    n = weights.numel()
    idx = torch.linspace(0, n - 1, min(samples, n), device=weights.device).round().long()
    probs = torch.softmax(last["teacher_logits"][idx].float(), dim=1)  # type: ignore[index]
    maxprob, t_class = probs.max(dim=1)
    columns = {
        "weight": weights[idx],
        "iou": last["iou"][idx],  # type: ignore[index]
        "teacher_maxprob": maxprob,
        "teacher_class": t_class,
        "label": last["target"][idx],  # type: ignore[index]
        **{k: v[idx] for k in ("h_t", "h_s") if (v := last.get(k)) is not None},
    }
    values = {k: v.detach().cpu().tolist() for k, v in columns.items()}
    stamp = f"{epoch:.6f}"  # 6 decimals (floats get 6 significant digits in the CSV): steps stay apart
    return [{"epoch": stamp, **{k: v[i] for k, v in values.items()}} for i in range(len(idx))]


class RoILog:
    """Writes ``roi_rows`` of every ``every``-th call to ``run_dir/roi_weights.csv`` (main process only).

    A resumed run drops the rows written after the point it resumes from (the first call's epoch)."""

    def __init__(self, run_dir: str | Path, every: int, samples: int = 64) -> None:
        if every < 1 or samples < 1:
            raise ValueError(f"RoI log: every and samples must be >= 1, got {every} and {samples}")
        self.path = Path(run_dir) / FILE
        self.every = every
        self.samples = samples
        self.calls = 0
        self.csv: CsvLog | None = None

    def __call__(self, epoch: float, last: dict[str, torch.Tensor | None]) -> None:
        """Count one training step at fractional ``epoch``; log its RoIs on every ``every``-th one."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        if self.csv is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.csv = CsvLog(self.path, "epoch", epoch - 1e-5)  # rows of this step on are rewritten
        self.calls += 1
        if self.calls % self.every == 0:
            rows = roi_rows(epoch, last, self.samples)
            if rows:
                self.csv.append(*rows)
