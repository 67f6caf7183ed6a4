"""``RunLogCallback``: an ``EAKDTrainer`` run's logs in the engine's vocabulary, so ``eakd report`` reads
LLM runs like engine runs; ``FiniteGuard``: stops a run whose loss went non-finite before it logs or saves;
``BestValidation``: validation ROUGE-L every N steps, keeping the best student's weights.
In ``args.output_dir``, on the main process:

- metrics.csv: one row per training log step: step, epoch, train_loss, train_loss_kd, train_loss_ce, lr,
  grad_norm (the Trainer's logged values),
- diagnostics.csv, diagnostics/samples-eXXXX.npz and TensorBoard ``tb/`` (when ``report_to`` holds
  "tensorboard"): ``eakd.engine.diagnostics.Diagnostics`` over the valid tokens of the micro-batches of
  each logging step (weights w, entropies h_t / h_s in nats at the policy's tau, per-token divergence).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from eakd.engine.checkpoint import atomic_save
from eakd.engine.diagnostics import Diagnostics
from eakd.engine.guard import FirstBadStep, InvalidBatchError, NonFiniteLossError
from eakd.engine.logs import CsvLog
from eakd.llm.data import Pair
from eakd.llm.evaluate import generate, rouge_l
from eakd.llm.progress import QUIET, ProgressHook
from eakd.llm.settings import INPUT_CHECKS, LOSS_TERMS

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


class StepProgress(TrainerCallback):
    """Reports each optimiser step to a progress hook (``eakd.llm.progress``) as "train"."""

    def __init__(self, progress: ProgressHook) -> None:
        self.progress = progress

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.progress.note("train")


class FiniteGuard(TrainerCallback):
    """Stops a run at the first logging step, checkpoint save or end of training after a loss term went
    NaN or inf, before the Trainer writes the log or the checkpoint (so the last good checkpoint stays the
    latest and no non-finite student is saved).

    The trainer hands each training micro-batch's ``TokenLossOutput.flags()`` to ``update``: the
    runners' one guard (``eakd.engine.guard.FirstBadStep``) keeps, on the device, the first step each flag
    was set: a term (``LOSS_TERMS``: weights, kd, ce) non-finite, or an input check (``INPUT_CHECKS``)
    failed; no host sync per step. ``check`` reads it back (one sync; the minimum over processes under
    torch.distributed) and raises ``InvalidBatchError`` naming the step and what the batch had, else
    ``NonFiniteLossError`` naming the step and the term(s).
    """

    def __init__(self) -> None:
        self.guard = FirstBadStep()

    def update(self, flags: Tensor, step: int) -> None:
        """Record ``step`` for the flags set in ``flags`` (``TokenLossOutput.flags``) not set before."""
        self.guard.update(dict(zip(FLAGS, flags.unbind(), strict=True)), step)

    def check(self) -> None:
        """Raise InvalidBatchError or NonFiniteLossError if any flag has been set (on any process)."""
        found = self.guard.read(_min_over_processes)
        if found is None:
            return
        step, names = found
        inputs = [what for name, what in INPUT_CHECKS.items() if name in names]
        if inputs:  # what a bad input computes is not meaningful: report the input, not the terms
            raise InvalidBatchError(
                f"training stopped: the batch at step {step} had {' and '.join(inputs)}; nothing was logged "
                "or saved after it (the latest checkpoint is the last good one): check the data, its "
                "collator (eakd.llm.data.collate) and the teacher cache"
            )
        terms = " and ".join(t for t in LOSS_TERMS if t in names)
        raise NonFiniteLossError(
            f"training stopped: the loss's {terms} term was non-finite (NaN or inf) at step {step}; nothing "
            "was logged or saved after it (the latest checkpoint is the last good one): lower the learning "
            "rate, or check the data, the teacher (cache) and the weight policy"
        )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if control.should_log or control.should_save or control.should_training_stop:
            self.check()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if control.should_log or control.should_save:
            self.check()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.check()


FLAGS = (*LOSS_TERMS, *INPUT_CHECKS)  # the order of ``TokenLossOutput.flags``


def _min_over_processes(local: Tensor) -> Tensor:
    """The elementwise minimum of ``local`` over the processes of torch.distributed (itself without)."""
    if dist.is_available() and dist.is_initialized():
        local = local.clone()
        dist.all_reduce(local, op=dist.ReduceOp.MIN)
    return local


SELECTION = "best_validation.pt"  # the best-validation selection, saved in each Trainer checkpoint


class BestValidation(TrainerCallback):
    """Greedy ROUGE-L (x100) of the student on the validation ``pairs`` every ``every`` optimiser steps
    and at the last step; keeps a CPU copy of the weights with the best score (the first on ties).

    After training: ``history`` [{"step", "rougeL"}], ``best`` {"step", "rougeL"}, ``best_state`` (a
    state dict for ``load_state_dict``), ``seconds`` spent validating. Runs on every process (each
    generates on its own copy).
    """

    def __init__(
        self, tokenizer: Any, pairs: list[Pair], every: int, max_new_tokens: int, batch_size: int,
        progress: ProgressHook = QUIET,
    ) -> None:  # fmt: skip
        self.tokenizer, self.pairs, self.every = tokenizer, pairs, every
        self.gen = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "progress": progress}
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] = {}
        self.best_state: dict[str, Tensor] = {}
        self.seconds = 0.0

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        step = state.global_step
        if (not self.every or step % self.every) and step < state.max_steps:
            return  # every 0: the last step only
        model = kwargs["model"]
        start = time.perf_counter()
        outputs = generate(model, self.tokenizer, [p["prompt"] for p in self.pairs], **self.gen)
        score = rouge_l(outputs, [p["response"] for p in self.pairs])
        model.train()
        self.seconds += time.perf_counter() - start
        self.history.append({"step": step, "rougeL": score})
        if not self.best or score > self.best["rougeL"]:
            self.best = {"step": step, "rougeL": score}
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Keep the selection in the Trainer checkpoint (``best_validation.pt``), so a resumed run selects
        among every step, not only those after the resume."""
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            selection = {"history": self.history, "best": self.best, "best_state": self.best_state}
            atomic_save(selection, folder / SELECTION)  # a kill mid-write leaves no half file

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """On a resume (global_step > 0), restore the selection saved with that checkpoint."""
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / SELECTION
        if state.global_step > 0 and path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            self.history, self.best, self.best_state = saved["history"], saved["best"], saved["best_state"]
