"""The training loop, on Hugging Face Accelerate: one code path for CPU, one GPU, DDP and multi-node.

Launch with ``eakd train CONFIG`` (one process), ``accelerate launch --multi_gpu -m eakd train CONFIG`` or
``torchrun --nproc_per_node N -m eakd train CONFIG`` (also CPU processes). Accelerate sets up the processes,
the device, DDP (only ``task.trainable`` is wrapped), autocast and the fp16 grad scaler. The engine shards
the data (the same global batches whatever the number of processes), accumulates gradients, steps the
schedule per optimiser step, evaluates, logs and checkpoints. See docs/engine.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import gather_object, send_to_device
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from eakd.engine.checkpoint import (
    atomic_save,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from eakd.engine.config import Config, ConfigError, dump_config, load_config
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


def shard(size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of process ``rank``'s share of a global batch of ``size``: near-equal contiguous parts."""
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class GlobalBatches(Sampler[list[int]]):
    """Batch sampler: global batches of ``batch_size`` from a permutation seeded by (seed, epoch), and this
    process's contiguous share of each. Every process count sees the same global batches; a last batch
    smaller than the number of processes is dropped. ``batch_sizes(i)`` = (global, local) size of batch i.
    """

    def __init__(
        self, n: int, batch_size: int, rank: int, world: int, seed: int, epoch: int, shuffle: bool
    ) -> None:
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        full, rest = divmod(n, batch_size)
        self.num_batches = full + (rest >= world)

    def __len__(self) -> int:
        return self.num_batches

    def batch_sizes(self, i: int) -> tuple[int, int]:
        size = min(self.batch_size, self.n - i * self.batch_size)
        start, end = shard(size, self.rank, self.world)
        return size, end - start

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for i in range(self.num_batches):
            batch = order[i * self.batch_size : (i + 1) * self.batch_size]
            start, end = shard(len(batch), self.rank, self.world)
            yield batch[start:end]


def _seed_worker(_: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_loader(
    dataset: Dataset[Any],
    batch_sampler: Sampler[list[int]],
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    seed: int,
) -> DataLoader[Any]:
    """A DataLoader over ``batch_sampler``; worker RNGs derive from ``seed`` only (exact on resume)."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(
    task: Task, batch_size: int, accelerator: Accelerator, num_workers: int
) -> Iterator[Any] | None:
    """This process's strided shard of ``task.eval_set`` in batches, moved to the device (None: no set)."""
    if task.eval_set is None:
        return None
    ids = list(range(accelerator.process_index, len(task.eval_set), accelerator.num_processes))  # type: ignore[arg-type]
    batches = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    loader = make_loader(task.eval_set, batches, num_workers, task.collate_fn, 0)  # type: ignore[arg-type]
    return (send_to_device(b, accelerator.device) for b in loader)


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


def _save_checkpoint(
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


def _load_checkpoint(
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
        progress = _load_checkpoint(resume, accelerator, model, optimizer, scheduler)
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
            _save_checkpoint(
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


def train_command(argv: list[str]) -> int:
    """``eakd train CONFIG [key=value ...] [--deterministic]``."""
    parser = argparse.ArgumentParser(prog="eakd train", description="Train (or resume) an experiment.")
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.01 train.resume=auto")
    parser.add_argument(
        "--deterministic", action="store_true", help="deterministic kernels (train.deterministic)"
    )
    args = parser.parse_args(argv)
    overrides = [*args.overrides, *(["train.deterministic=true"] if args.deterministic else [])]
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"eakd train: {err}", file=sys.stderr)
        return 2
    train(cfg)
    return 0


def eval_command(argv: list[str]) -> int:
    """``eakd eval CONFIG|RUN_DIR [key=value ...] [--weights PATH]``: print the metrics as JSON."""
    parser = argparse.ArgumentParser(prog="eakd eval", description="Evaluate a trained run or a config.")
    parser.add_argument("target", help="a run folder (uses its config.yaml) or a YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data")
    parser.add_argument(
        "--weights", help="weights file (default: the run's best.pt, else its latest checkpoint)"
    )
    args = parser.parse_args(argv)
    target = Path(args.target)
    try:
        cfg = load_config(target / "config.yaml" if target.is_dir() else target, args.overrides)
    except ConfigError as err:
        print(f"eakd eval: {err}", file=sys.stderr)
        return 2
    run_dir = target if target.is_dir() else cfg.run_dir
    weights = args.weights
    if weights is None:
        best = run_dir / "best.pt"
        weights = best if best.is_file() else latest_checkpoint(run_dir)
    if weights is None:
        print(f"eakd eval: no weights found in {run_dir}; evaluating the untrained model", file=sys.stderr)
    metrics = evaluate_run(cfg, weights)
    print(json.dumps({"weights": None if weights is None else str(weights), **metrics}, indent=2))
    return 0
