"""The Task protocol the training loop runs, and the task registry.

A task owns the models, the data sets and the loss; the engine (``eakd.engine.loop``) owns everything
else: devices, processes, batching, mixed precision, optimiser, schedule, checkpoints, logs. The engine
knows no task by name: front-ends register theirs (``eakd.vision.task``, ``eakd.detection.task``) and
declare them as entry points (group ``eakd.tasks``), so ``TASKS.get("detection")`` imports what it
needs. See docs/engine.md for the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor, nn
from torch.utils.data import Dataset

from eakd.registry import Registry

if TYPE_CHECKING:
    from accelerate import Accelerator

    from eakd.engine.config import Config


@runtime_checkable
class Task(Protocol):
    """What the engine needs from a task (classification, detection, ...).

    trainable: the student plus any learnable distillation parts (one module); the only thing the
        engine optimises and wraps for DDP. Its ``forward`` must do the student's work, so DDP sees it.
    teacher: frozen module or None; the engine moves it to the device, sets eval() and
        requires_grad(False) and never wraps it. The task runs it under ``torch.no_grad()``.
    train_set, eval_set: map-style data sets (eval_set may be None); collate_fn: None = default.
    metric: the key of ``evaluate``'s result that picks the best epoch (higher is better).
    """

    trainable: nn.Module
    teacher: nn.Module | None
    train_set: Dataset[Any]
    eval_set: Dataset[Any] | None
    collate_fn: Callable[[list[Any]], Any] | None
    metric: str

    def training_step(self, model: nn.Module, batch: Any, epoch: float) -> dict[str, Tensor]:
        """Named 0-dim loss terms for one micro-batch (the engine sums them for backward).

        model: ``trainable`` as prepared (possibly DDP-wrapped): call it, not ``self.trainable``.
        batch: this process's share of the global batch, on the device. epoch: fractional progress,
        ``epoch_index + (i + 1) / batches_per_epoch``.
        """
        ...

    def evaluate(self, model: nn.Module, loader: Iterable[Any], accelerator: Accelerator) -> dict[str, float]:
        """Metrics over this process's shard of ``eval_set``, reduced over all processes (same on each).

        model: the unwrapped ``trainable`` in eval mode, called under ``torch.no_grad()``.
        """
        ...

    def diagnostics(self) -> dict[str, Tensor] | None:
        """Per-sample values of the last training step, shape (N,) each, or None: any of "weights",
        "h_t", "h_s" (entropies in nats), "per_sample" (unweighted distillation loss), "target"."""
        ...


TaskBuilder = Callable[["Config"], Task]
TASKS: Registry[TaskBuilder] = Registry("task", group="eakd.tasks")
register_task = TASKS.register


def build_task(cfg: Config) -> Task:
    """The task named by ``cfg.task``: a registered name (or entry point) or ``"package.module:function"``."""
    task = TASKS.get(cfg.task)(cfg)
    if not isinstance(task, Task):
        raise TypeError(f"task builder for {cfg.task!r} returned {type(task).__name__}, which is not a Task")
    return task
