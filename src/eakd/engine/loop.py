"""The training loop, on Hugging Face Accelerate: one code path for CPU, one GPU, DDP and multi-node.

Launch with ``eakd train CONFIG`` (one process), ``accelerate launch --multi_gpu -m eakd train CONFIG`` or
``torchrun --nproc_per_node N -m eakd train CONFIG`` (also CPU processes). Accelerate sets up the processes,
the device, DDP (only ``task.trainable`` is wrapped), autocast and the fp16 grad scaler. The engine shards
the data (``eakd.engine.data``: the same global batches whatever the number of processes), accumulates
gradients, steps the schedule per optimiser step, evaluates, logs and checkpoints. See docs/engine.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import send_to_device
from torch import nn
from tqdm.auto import tqdm

from eakd.engine.checkpoint import (
    Progress,
    atomic_save,
    checkpoint_path,
    load_checkpoint,
    load_training_state,
    prune_checkpoints,
    resolve_resume,
    save_training_state,
)
from eakd.engine.config import Config, dump_config
from eakd.engine.data import GlobalBatches, eval_loader, make_loader
from eakd.engine.diagnostics import Diagnostics
from eakd.engine.logs import CsvLog
from eakd.engine.optim import build_optimizer, build_scheduler
from eakd.engine.task import Task, build_task


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


class Console:
    """Console lines from the main process, printed through tqdm while a progress bar is open."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(msg)
        else:
            print(msg, flush=True)


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _train_epoch(
    cfg: Config,
    task: Task,
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    progress: Progress,
    writer: Any,
    diag: Diagnostics | None,
    log: Console,
) -> dict[str, float]:
    """One epoch (``progress.epoch`` is its 0-based index); returns the mean loss terms over processes."""
    t, epoch = cfg.train, progress.epoch
    rank, world = accelerator.process_index, accelerator.num_processes
    model.train()
    sampler = GlobalBatches(len(task.train_set), t.batch_size, rank, world, cfg.experiment.seed, epoch, True)  # type: ignore[arg-type]
    worker_seed = cfg.experiment.seed * 100_003 + epoch * 1_009 + rank
    loader = make_loader(task.train_set, sampler, t.num_workers, task.collate_fn, worker_seed)
    n = len(sampler)
    sums: dict[str, Any] = {}
    window: dict[str, Any] = {}
    window_n, n_seen = 0, 0
    main_tty = accelerator.is_main_process and sys.stderr.isatty()
    bar = tqdm(
        total=n, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, dynamic_ncols=True, disable=not main_tty
    )
    log.bar = bar
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        batch = send_to_device(batch, accelerator.device)
        global_n, local_n = sampler.batch_sizes(i)
        group_start = i - i % t.grad_accum
        group_len = min(t.grad_accum, n - group_start)
        sync = i == group_start + group_len - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            with accelerator.autocast():
                terms = task.training_step(model, batch, epoch + (i + 1) / n)
            loss = torch.stack([v.float() for v in terms.values()]).sum()
            # local mean * local_n * world / global_n: DDP's mean over processes = the global batch mean
            accelerator.backward(loss * (local_n * world / global_n) / group_len)
        if diag is not None:
            diag.add(task.diagnostics())
        for k, v in {**terms, "loss": loss}.items():
            v = v.detach().float()
            sums[k] = sums.get(k, 0.0) + v
            window[k] = window.get(k, 0.0) + v
        window_n += 1
        n_seen += global_n
        bar.update(1)
        if not sync:
            continue
        if t.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        step, lr = progress.step, optimizer.param_groups[0]["lr"]
        if t.log_every > 0 and step % t.log_every == 0:
            means = {k: float(v) / window_n for k, v in window.items()}
            window, window_n = {}, 0
            bar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{lr:.3g}")
            if writer is not None:
                for k, v in means.items():
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/lr", lr, step)
            if bar.disable:
                log(f"epoch {epoch + 1} step {step} lr={lr:.4g} {_fmt_metrics(means)}")
        if diag is not None and (step % t.diag_every == 0 or i == n - 1):
            diag.flush(step, epoch + (i + 1) / n)
    bar.close()
    log.bar = None
    epoch_time = time.perf_counter() - start
    progress.train_time_s += epoch_time
    progress.samples_per_s = n_seen / max(epoch_time, 1e-9)
    if diag is not None:
        diag.end_epoch(epoch + 1)
    names = sorted(sums)
    means_t = torch.stack([torch.as_tensor(sums[k], device=accelerator.device) for k in names]) / max(n, 1)
    return dict(zip(names, accelerator.reduce(means_t, reduction="mean").tolist(), strict=True))


def train(cfg: Config, task: Task | None = None) -> dict[str, Any]:
    """Run (or resume) the experiment ``cfg``; returns the summary also written to ``summary.json``.

    task: a ready Task (for Python users and tests); None builds ``cfg.task`` from the config.
    """
    t = cfg.train
    accelerator = make_accelerator(t.mixed_precision, t.cpu)
    world, main = accelerator.num_processes, accelerator.is_main_process
    if t.grad_accum < 1 or t.batch_size < world:
        raise ValueError(f"need train.grad_accum >= 1 and train.batch_size >= {world} (processes)")
    seed_everything(cfg.experiment.seed + accelerator.process_index, t.deterministic)
    task = task if task is not None else build_task(cfg)
    run_dir = cfg.run_dir
    if main:
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
    resume = resolve_resume(cfg)
    if resume is not None:
        progress = load_training_state(resume, accelerator, model, optimizer, scheduler)
        log(f"resumed from {resume}: epoch {progress.epoch}, step {progress.step}")

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=progress.step if resume is not None else None)
    metrics_csv = CsvLog(run_dir / "metrics.csv", "epoch", progress.epoch) if main else None
    diag = Diagnostics(run_dir, t.diag_samples, writer, progress.step) if main and t.diag_every > 0 else None
    n_params = sum(p.numel() for p in params)
    log(
        f"run {run_dir}: {world} process(es) on {accelerator.device}, {n_params} trainable parameters, "
        f"{batches_per_epoch} batches/epoch, mixed_precision={t.mixed_precision}"
    )

    while progress.epoch < t.epochs:
        train_means = _train_epoch(
            cfg, task, accelerator, model, optimizer, scheduler, progress, writer, diag, log
        )
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
                if main:
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
                    writer.add_scalar(f"epoch/{k}", v, epoch)
            writer.flush()
        best_text = f"best {task.metric}={best['value']:.4g} (epoch {best['epoch']})"
        eval_text = _fmt_metrics(progress.last)
        log(
            f"epoch {epoch}/{t.epochs} train: {_fmt_metrics(train_means)} | eval: {eval_text} | {best_text} "
            f"| {progress.samples_per_s:.0f} samples/s"
        )
        if t.ckpt_every > 0 and (epoch % t.ckpt_every == 0 or epoch == t.epochs):
            save_training_state(
                checkpoint_path(run_dir, epoch), accelerator, model, optimizer, scheduler, progress
            )
            if main:
                prune_checkpoints(run_dir, t.keep_checkpoints)

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
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        last_text = _fmt_metrics(progress.last)
        log(f"done: best {task.metric}={best['value']:.4g} (epoch {best['epoch']}), last {last_text}")
    if writer is not None:
        writer.close()
    accelerator.end_training()
    return summary


def evaluate_run(cfg: Config, weights: str | Path | None = None) -> dict[str, float]:
    """Evaluate the trainable module of ``cfg``'s task with ``weights``: a run's best.pt or checkpoint
    (``{"model": trainable state}``), or a bare state dict of the student (``model.student``)."""
    accelerator = make_accelerator(cfg.train.mixed_precision, cfg.train.cpu)
    seed_everything(cfg.experiment.seed, cfg.train.deterministic)
    task = build_task(cfg)
    if weights is not None:
        ck = load_checkpoint(weights)
        state = ck.get("model", ck)
        student = getattr(task.trainable, "student", None)
        if isinstance(student, nn.Module) and not any(k.startswith("student.") for k in state):
            student.load_state_dict(state)  # a bare student state dict (e.g. a trained teacher's weights)
        else:
            task.trainable.load_state_dict(state)
    task.trainable.to(accelerator.device)
    _prepare_teacher(task, accelerator.device)
    return _evaluate(task, task.trainable, accelerator, cfg)
