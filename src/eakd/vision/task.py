"""Image classification as an engine task: the student + loss module, the task, and its builder.

Registered as the task "classification" (and declared as an ``eakd.tasks`` entry point).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from eakd.distill import DistillLoss
from eakd.engine.task import register_task
from eakd.losses import cross_entropy

if TYPE_CHECKING:
    from accelerate import Accelerator

    from eakd.engine.config import Config


def split_output(out: Any) -> tuple[Tensor, Any]:
    """A model's output as (logits, feats): the zoo returns a pair, a plain module just logits."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


class DistillModule(nn.Module):
    """Student + distillation loss as one trainable module (the learnable loss parts train with it).

    forward(views, target (N,), teacher_logits, teacher_feats, epoch) -> (dict of 0-dim loss terms,
    student logits (N, K) of the first view). views: the images (N, ...) or a tuple of augmented views
    (MLKD's weak and strong), with teacher_logits / teacher_feats one per view then. The loss runs once
    per view and the terms are summed, the hard-label cross-entropy taken from the first view only.
    Without a loss: ``ce_weight`` * cross-entropy. ``first_last``: the loss's ``last`` of the first view.
    """

    def __init__(self, student: nn.Module, loss: DistillLoss | None, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.student = student
        self.loss = loss
        self.ce_weight = ce_weight
        self.first_last: dict[str, Tensor | None] = {}

    def forward(
        self,
        views: Tensor | tuple[Tensor, ...],
        target: Tensor,
        teacher_logits: Any = None,
        teacher_feats: Any = None,
        epoch: float | None = None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        many = isinstance(views, tuple)
        views_t = views if isinstance(views, tuple) else (views,)
        t_logits = teacher_logits if many else (teacher_logits,)
        t_feats = teacher_feats if many else (teacher_feats,)
        terms: dict[str, Tensor] = {}
        first = None
        for i, x in enumerate(views_t):
            logits, feats = split_output(self.student(x))
            first = logits if first is None else first
            if self.loss is None:
                if i == 0:
                    terms["loss_ce"] = self.ce_weight * cross_entropy(logits, target)
                continue
            if t_logits[i] is None:
                raise ValueError("a distillation loss needs the teacher's logits")
            out = self.loss(
                logits, t_logits[i], target, student_feats=feats, teacher_feats=t_feats[i], epoch=epoch
            )
            if i == 0:
                self.first_last = dict(self.loss.last)
            for name, value in out.items():
                if i == 0 or name != "loss_ce":
                    terms[name] = terms[name] + value if name in terms else value
        assert first is not None
        return terms, first


class ClassificationTask:
    """Image classification with optional distillation: batches are ``(images, labels)`` or, with two
    augmented views (MLKD), ``(weak, strong, labels)``; diagnostics come from the first view.

    student, teacher: modules returning logits or ``(logits, feats)`` (the zoo's contract).
    loss: the DistillLoss (None: the student alone, ``ce_weight`` * cross-entropy). Evaluation gives
    ``top1``, ``top5`` (percent) and ``loss`` (mean cross-entropy); the best epoch is picked by top1.
    """

    metric = "top1"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        loss: DistillLoss | None,
        train_set: Dataset[Any],
        eval_set: Dataset[Any] | None,
        ce_weight: float = 1.0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        if loss is not None and teacher is None:
            raise ValueError("a distillation loss needs a teacher (set model.teacher or distill.method=none)")
        self.trainable = DistillModule(student, loss, ce_weight)
        self.teacher = teacher
        self.train_set = train_set
        self.eval_set = eval_set
        self.collate_fn = collate_fn
        self.loss = loss
        self._target: Tensor | None = None

    def training_step(self, model: nn.Module, batch: Any, epoch: float) -> dict[str, Tensor]:
        """batch = (images, labels) or (weak, strong, labels); the teacher runs under no_grad."""
        *xs, y = batch
        t_out = []
        if self.teacher is not None:
            with torch.no_grad():
                t_out = [split_output(self.teacher(x)) for x in xs]
        t_logits = tuple(o[0] for o in t_out) or None
        t_feats = tuple(o[1] for o in t_out) or None
        if len(xs) == 1:  # one view: plain tensors, not 1-tuples
            views: Any = xs[0]
            t_logits, t_feats = (t_logits[0], t_feats[0]) if t_out else (None, None)
        else:
            views = tuple(xs)
        terms, _ = model(views, y, t_logits, t_feats, epoch)
        self._target = y
        return terms

    def diagnostics(self) -> dict[str, Tensor] | None:
        """Weights, entropies (as the loss's policy computed them), per-sample loss and target of the last
        step's first view; None without a distillation loss."""
        if self.loss is None:
            return None
        out = {k: v for k, v in self.trainable.first_last.items() if v is not None}
        return {**out, "target": self._target} if out else None

    def evaluate(self, model: nn.Module, loader: Iterable[Any], accelerator: Accelerator) -> dict[str, float]:
        """top1 / top5 accuracy (%) and mean cross-entropy of the student, summed over all processes."""
        student = model.student if isinstance(model, DistillModule) else model
        sums = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # top1, top5, ce, count
        for batch in loader:
            x, y = batch[0], batch[1]
            with accelerator.autocast():
                logits, _ = split_output(student(x))
            logits = logits.float()
            k = min(5, logits.shape[-1])
            top = logits.topk(k, dim=-1).indices
            hit = top == y[:, None]
            sums += torch.stack(
                [
                    hit[:, 0].sum().double(),
                    hit.any(dim=-1).sum().double(),
                    F.cross_entropy(logits, y, reduction="sum").double(),
                    torch.tensor(float(len(y)), dtype=torch.float64, device=sums.device),
                ]
            )
        sums = accelerator.reduce(sums, reduction="sum")
        n = max(float(sums[3]), 1.0)
        return {
            "top1": 100.0 * float(sums[0]) / n,
            "top5": 100.0 * float(sums[1]) / n,
            "loss": float(sums[2]) / n,
        }


@register_task("classification")
def build_classification(cfg: Config) -> ClassificationTask:
    """Student and teacher from the model zoo, data from ``eakd.vision.datasets``, loss from ``distill``."""
    from eakd.vision.datasets import build_datasets
    from eakd.vision.models import create_model, load_checkpoint

    train_set, eval_set, info = build_datasets(cfg.data)
    num_classes = cfg.model.num_classes or info["num_classes"]
    common = {"num_classes": num_classes, "in_channels": info["in_channels"]}
    student = create_model(cfg.model.student, **common, **cfg.model.student_options)
    if cfg.model.student_checkpoint:
        load_checkpoint(student, cfg.model.student_checkpoint)
    teacher = None
    if cfg.model.teacher is not None and cfg.distill.method != "none":
        teacher = create_model(cfg.model.teacher, **common, **cfg.model.teacher_options)
        if cfg.teacher_file:  # None: no file ("random"; unset is refused by the engine's pre-flight)
            load_checkpoint(teacher, cfg.teacher_file)
    loss = DistillLoss.from_config(cfg.distill, sync_checks=False)  # the engine reads the loss terms
    return ClassificationTask(student, teacher, loss, train_set, eval_set, ce_weight=cfg.distill.ce_weight)
