"""The training loop, on Hugging Face Accelerate: one code path for CPU, one GPU, DDP and multi-node.

Launch with ``eakd train CONFIG`` (one process), ``accelerate launch --multi_gpu -m eakd train CONFIG`` or
``torchrun --nproc_per_node N -m eakd train CONFIG`` (also CPU processes). Accelerate sets up the processes,
the device, DDP (only ``task.trainable`` is wrapped), autocast and the fp16 grad scaler. The engine shards
the data (``eakd.engine.data``: the same global batches whatever the number of processes), accumulates
gradients, steps the schedule per optimiser step, evaluates, logs and checkpoints. See docs/engine.md.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from torch import nn

from eakd.engine.checkpoint import (
    Progress,
    atomic_save,
    checkpoint_path,
    load_checkpoint,
    load_training_state,
    load_weights,
)
from eakd.engine.config import Config, dump_config
from eakd.engine.data import GlobalBatches, eval_loader
from eakd.engine.diagnostics import Diagnostics
from eakd.engine.epoch import Console, Run, fmt_metrics, train_epoch
from eakd.engine.files import atomic_write_text
from eakd.engine.guard import FirstBadStep
from eakd.engine.logs import CsvLog
from eakd.engine.optim import build_optimizer, build_scheduler
from eakd.engine.preflight import preflight
from eakd.engine.rundir import check_run_dir, clear_run_dir
from eakd.engine.task import Task, build_task


def best_text(metric: str, best: dict[str, Any]) -> str:
    """The best evaluation so far for the log: ``best top1=0.81 (epoch 3)``."""
    return f"best {metric}={best['value']:.4g} (epoch {best['epoch']})"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); ``deterministic`` also asks for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def make_accelerator(mixed_precision: str, cpu: bool) -> Accelerator:
    """An Accelerator for one run. Accelerate keeps its settings process-wide; in a single process (not
    under a launcher) they are reset first, so that runs one after another may differ in them."""
    if not PartialState().use_distributed:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def _evaluate(task: Task, model: nn.Module, accelerator: Accelerator, cfg: Config) -> dict[str, float]:
    loader = eval_loader(
        task, cfg.train.eval_batch_size or cfg.train.batch_size, accelerator, cfg.train.num_workers
    )
    if loader is None:
        return {}
    inner = accelerator.unwrap_model(model)
    inner.eval()
    with torch.no_grad():
        return task.evaluate(inner, loader, accelerator)


def _prepare_teacher(task: Task, device: torch.device) -> None:
    if task.teacher is None:
        return
    shared = {id(p) for p in task.teacher.parameters()} & {id(p) for p in task.trainable.parameters()}
    if shared:
        raise ValueError("the teacher shares parameters with the trainable module; keep them separate")
    task.teacher.to(device).eval().requires_grad_(False)


def train(cfg: Config, task: Task | None = None) -> dict[str, Any]:
    """Run (or resume) the experiment ``cfg``; returns the summary also written to ``summary.json``.

    task: a ready Task (for Python users and tests); None builds ``cfg.task`` from the config, after the
    pre-flight checks (``eakd.engine.preflight``: run folder writable, teacher weights present and
    loadable) and before the task's data is read or downloaded.
    Raises ValueError before anything is written when the run folder holds another run, or a resume's
    config differs from the run's (``eakd.engine.rundir``), and ``NonFiniteLossError`` when a loss term
    turns NaN or inf.
    """
    t = cfg.train
    accelerator = make_accelerator(t.mixed_precision, t.cpu)
    world, main = accelerator.num_processes, accelerator.is_main_process
    if t.grad_accum < 1 or t.batch_size < world:
        raise ValueError(f"need train.grad_accum >= 1 and train.batch_size >= {world} (processes)")
    resume, ck, skipped = check_run_dir(cfg)  # every process, before the main process writes anything
    accelerator.wait_for_everyone()
    seed_everything(cfg.experiment.seed + accelerator.process_index, t.deterministic)
    if task is None:
        preflight(cfg)
        task = build_task(cfg)
    run_dir = cfg.run_dir
    if main:
        if t.overwrite:
            clear_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
    log = Console(main)

    batches_per_epoch = len(GlobalBatches(len(task.train_set), t.batch_size, 0, world, 0, 0, False))  # type: ignore[arg-type]
    if t.sync_bn and world > 1:
        task.trainable = nn.SyncBatchNorm.convert_sync_batchnorm(task.trainable)
    params = [p for p in task.trainable.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.optim)
    scheduler = build_scheduler(
        optimizer, cfg.schedule, math.ceil(batches_per_epoch / t.grad_accum), t.epochs
    )
    model, optimizer = accelerator.prepare(task.trainable, optimizer)
    _prepare_teacher(task, accelerator.device)

    progress = Progress(best={"metric": task.metric, "value": -math.inf, "epoch": 0, "metrics": {}})
    sums: dict[str, torch.Tensor] = {}
    if resume is not None and ck is not None:
        progress, sums = load_training_state(ck, resume, accelerator, model, optimizer, scheduler)
        for line in skipped:  # newer checkpoints that cannot be read (a truncated latest one)
            log(f"train.resume=auto: {line}")
        log(f"resumed from {resume}: epoch {progress.epoch} + {progress.batch} batches, step {progress.step}")

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        # points after the checkpoint's step (a killed run's, or a fresh start's leftovers) are hidden
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=progress.step + 1)
    metrics_csv = CsvLog(run_dir / "metrics.csv", "epoch", progress.epoch) if main else None
    diag = Diagnostics(run_dir, t.diag_samples, writer, progress.step) if main and t.diag_every > 0 else None
    run = Run(
        cfg, task, accelerator, model, optimizer, scheduler, progress, writer, diag, log, FirstBadStep()
    )
    n_params = sum(p.numel() for p in params)
    log(
        f"run {run_dir}: {world} process(es) on {accelerator.device}, {n_params} trainable parameters, "
        f"{batches_per_epoch} batches/epoch, mixed_precision={t.mixed_precision}"
    )

    while progress.epoch < t.epochs:
        train_means = train_epoch(run, sums)
        sums = {}
        progress.epoch += 1
        epoch, best = progress.epoch, progress.best
        evaluated = t.eval_every > 0 and (epoch % t.eval_every == 0 or epoch == t.epochs)
        if evaluated:
            progress.last = _evaluate(task, model, accelerator, cfg)
            if progress.last.get(task.metric, -math.inf) > best["value"]:
                value = progress.last[task.metric]
                best = progress.best = {
                    "metric": task.metric,
                    "value": value,
                    "epoch": epoch,
                    "metrics": progress.last,
                }
                if main:  # the guard was checked at the end of the epoch: the weights are finite
                    state = accelerator.unwrap_model(model).state_dict()
                    atomic_save(
                        {"model": state, "epoch": epoch, "metrics": progress.last}, run_dir / "best.pt"
                    )
        row = {
            "epoch": epoch,
            "step": progress.step,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v for k, v in train_means.items()},
            **({f"eval_{k}": v for k, v in progress.last.items()} if evaluated else {}),
            f"best_{task.metric}": best["value"],
            "samples_per_s": progress.samples_per_s,
            "train_time_s": progress.train_time_s,
        }
        if metrics_csv is not None:
            metrics_csv.append(row)
        if writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step", "lr") and isinstance(v, float) and math.isfinite(v):
                    writer.add_scalar(f"epoch/{k}", v, progress.step)
            writer.flush()
        eval_text = ""
        if progress.last:  # an evaluation has run (this epoch or before)
            eval_text = f" | eval: {fmt_metrics(progress.last)} | {best_text(task.metric, best)}"
        log(
            f"epoch {epoch}/{t.epochs} train: {fmt_metrics(train_means)}{eval_text} "
            f"| {progress.samples_per_s:.0f} samples/s"
        )
        if t.ckpt_every > 0 and (epoch % t.ckpt_every == 0 or epoch == t.epochs):
            run.save(checkpoint_path(run_dir, epoch))

    best = progress.best
    summary = {
        "name": cfg.experiment.name,
        "task": cfg.task,
        "metric": task.metric,
        "best": best if math.isfinite(best["value"]) else {**best, "value": None},
        "last": {"epoch": progress.epoch, "metrics": progress.last},
        "steps": progress.step,
        "train_time_s": progress.train_time_s,
        "samples_per_s": progress.samples_per_s,
        "processes": world,
        "mixed_precision": t.mixed_precision,
        "trainable_params": n_params,
    }
    if main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=float))
        done = "no evaluation"
        if progress.last:
            done = f"{best_text(task.metric, best)}, last {fmt_metrics(progress.last)}"
        log(f"done: {done}")
    if writer is not None:
        writer.close()
    accelerator.end_training()
    return summary


def evaluate_run(cfg: Config, weights: str | Path | None = None) -> dict[str, float]:
    """Evaluate the trainable module of ``cfg``'s task with ``weights``: a run's best.pt or checkpoint
    (``{"model": trainable state}``), or a bare state dict of the student (``model.student``). A file
    that is missing, unreadable or holds weights of another model raises one FileNotFoundError or
    ValueError naming it."""
    accelerator = make_accelerator(cfg.train.mixed_precision, cfg.train.cpu)
    seed_everything(cfg.experiment.seed, cfg.train.deterministic)
    ck = load_checkpoint(weights) if weights is not None else None  # before the (slow) task is built
    task = build_task(cfg)
    if ck is not None and weights is not None:
        state = ck["model"] if isinstance(ck.get("model"), dict) else ck
        student = getattr(task.trainable, "student", None)
        if isinstance(student, nn.Module) and not any(str(k).startswith("student.") for k in state):
            load_weights(student, state, weights)  # a bare student state dict (e.g. a trained teacher's)
        else:
            load_weights(task.trainable, state, weights)
    task.trainable.to(accelerator.device)
    _prepare_teacher(task, accelerator.device)
    return _evaluate(task, task.trainable, accelerator, cfg)
