"""``RunLogCallback``: an ``EAKDTrainer`` run's logs in the engine's vocabulary, so ``eakd report`` reads
LLM runs like engine runs. In ``args.output_dir``, on the main process:

- metrics.csv: one row per training log step: step, epoch, train_loss, train_loss_kd, train_loss_ce, lr,
  grad_norm (the Trainer's logged values),
- diagnostics.csv, diagnostics/samples-eXXXX.npz and TensorBoard ``tb/`` (when ``report_to`` holds
  "tensorboard"): ``eakd.engine.diagnostics.Diagnostics`` over the valid tokens of the micro-batches of
  each logging step (weights w, entropies h_t / h_s in nats at the policy's tau, per-token divergence).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from eakd.engine.diagnostics import Diagnostics
from eakd.engine.logs import CsvLog

METRIC_NAMES = {
    "loss": "train_loss",
    "loss_kd": "train_loss_kd",
    "loss_ce": "train_loss_ce",
    "learning_rate": "lr",
}


class RunLogCallback(TrainerCallback):
    """Writes metrics.csv and the weight diagnostics (see the module docstring). samples: raw samples kept
    per diagnostics flush (``Diagnostics``). The trainer hands each logging step's token payloads to
    ``add``; nothing is kept on other processes."""

    def __init__(self, samples: int = 256) -> None:
        self.samples = samples
        self.diag: Diagnostics | None = None
        self.metrics: CsvLog | None = None
        self.writer: Any = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in (args.report_to or []):
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=state.global_step or None)
        self.diag = Diagnostics(out, self.samples, self.writer, state.global_step)
        self.metrics = CsvLog(out / "metrics.csv", "step", state.global_step)

    def add(self, payload: dict[str, Tensor]) -> None:
        """One micro-batch's per-token payload (1-D tensors keyed weights, h_t, h_s, per_sample)."""
        if self.diag is not None:
            self.diag.add(payload)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.diag is None or self.metrics is None or not logs or "loss" not in logs:
            return  # not the main process, or not a training log (eval, the end-of-training summary)
        epoch = state.epoch or 0.0
        self.diag.flush(state.global_step, epoch)
        row = {METRIC_NAMES.get(k, k): v for k, v in logs.items() if k not in ("step", "epoch")}
        self.metrics.append({"step": state.global_step, "epoch": round(epoch, 4), **row})

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.diag is not None:
            self.diag.end_epoch(max(math.ceil(state.epoch or 0.0), 1))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.writer is not None:
            self.writer.close()
