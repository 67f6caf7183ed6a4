"""One training epoch of the loop: micro-batches, gradient accumulation, logging, mid-epoch checkpoints,
and the non-finite guard (``eakd.engine.guard``, shared with the LLM runner).

The guard keeps, per loss term, the first optimiser step whose value was NaN or inf as a device tensor
updated with torch ops (no host read per step). It is read, over all processes, at the logging steps
(``train.log_every``), before every checkpoint or best.pt write and at the end of each epoch; a
non-finite term then stops the run with ``NonFiniteLossError`` before anything from that step is saved.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import Tensor, nn
from tqdm.auto import tqdm

from eakd.engine.checkpoint import (
    Progress,
    checkpoint_path,
    latest_checkpoint,
    prune_checkpoints,
    save_training_state,
)
from eakd.engine.config import Config, to_dict
from eakd.engine.data import GlobalBatches, make_loader
from eakd.engine.diagnostics import Diagnostics
from eakd.engine.guard import FirstBadStep, NonFiniteLossError
from eakd.engine.task import Task


def check_guard(guard: FirstBadStep, accelerator: Accelerator, run_dir: Path) -> None:
    """Read the guard over all processes; raise ``NonFiniteLossError`` naming the first step and term."""
    n = len(guard.first)
    found = guard.read(lambda local: accelerator.gather(local).view(-1, n).amin(0))
    if found is None:
        return
    step, names = found
    name = min(names, key=lambda k: (k == "loss", k))  # there a task's term rather than the total "loss"
    latest = latest_checkpoint(run_dir)
    kept = f"{latest} holds the last good state" if latest else "no checkpoint was written"
    raise NonFiniteLossError(
        f"loss term {name!r} is not finite (nan or inf) at optimiser step {step}; training stopped "
        f"and {kept} (lower optim.lr, set train.max_grad_norm, or check the data)"
    )


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


def fmt_metrics(metrics: dict[str, float]) -> str:
    """``k=v`` pairs, 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


@dataclass
class Run:
    """What the loop carries from step to step: the config, the prepared objects, the outputs."""

    cfg: Config
    task: Task
    accelerator: Accelerator
    model: nn.Module
    optimizer: Any
    scheduler: Any
    progress: Progress
    writer: Any
    diag: Diagnostics | None
    log: Console
    guard: FirstBadStep

    def save(self, path: Path, epoch_sums: dict[str, Tensor] | None = None) -> None:
        """Check the guard, flush TensorBoard, write the training checkpoint ``path`` (all processes call
        this: a kill after it loses no point before it), prune old checkpoints."""
        run_dir = self.cfg.run_dir
        check_guard(self.guard, self.accelerator, run_dir)
        if self.writer is not None:
            self.writer.flush()
        save_training_state(
            path,
            self.accelerator,
            self.model,
            self.optimizer,
            self.scheduler,
            self.progress,
            to_dict(self.cfg),
            epoch_sums,
        )
        if self.accelerator.is_main_process:
            prune_checkpoints(run_dir, self.cfg.train.keep_checkpoints)


def train_epoch(run: Run, sums: dict[str, Tensor]) -> dict[str, float]:
    """Train epoch ``run.progress.epoch`` (0-based) from micro-batch ``run.progress.batch`` on; ``sums``
    holds this process's loss sums of the batches done before (a mid-epoch resume). Returns the mean
    loss terms of the whole epoch over processes."""
    cfg, task, accelerator, p, log = run.cfg, run.task, run.accelerator, run.progress, run.log
    t, epoch, model = cfg.train, p.epoch, run.model
    rank, world = accelerator.process_index, accelerator.num_processes
    model.train()
    seed = cfg.experiment.seed
    sampler = GlobalBatches(len(task.train_set), t.batch_size, rank, world, seed, epoch, True, p.batch)  # type: ignore[arg-type]
    worker_seed = seed * 100_003 + epoch * 1_009 + rank
    loader = make_loader(task.train_set, sampler, t.num_workers, task.collate_fn, worker_seed)
    n = sampler.num_batches
    window: dict[str, Any] = {}
    window_n, n_seen = 0, 0
    main_tty = accelerator.is_main_process and sys.stderr.isatty()
    bar = tqdm(
        total=n,
        initial=p.batch,
        desc=f"epoch {epoch + 1}/{t.epochs}",
        leave=False,
        dynamic_ncols=True,
        disable=not main_tty,
    )
    log.bar = bar
    start = mark = time.perf_counter()
    for i, batch in enumerate(loader, start=p.batch):
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
        if run.diag is not None:
            run.diag.add(task.diagnostics())
        values = {k: v.detach().float() for k, v in {**terms, "loss": loss}.items()}
        run.guard.update({k: ~torch.isfinite(v) for k, v in values.items()}, p.step + 1)
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
            window[k] = window.get(k, 0.0) + v
        window_n += 1
        n_seen += global_n
        p.batch = i + 1
        bar.update(1)
        if not sync:
            continue
        if t.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        p.step += 1
        step, lr = p.step, run.optimizer.param_groups[0]["lr"]
        if t.log_every > 0 and step % t.log_every == 0:
            check_guard(run.guard, accelerator, cfg.run_dir)
            means = {k: float(v) / window_n for k, v in window.items()}
            window, window_n = {}, 0
            bar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{lr:.3g}")
            if run.writer is not None:
                for k, v in means.items():
                    run.writer.add_scalar(f"train/{k}", v, step)
                run.writer.add_scalar("train/lr", lr, step)
            if bar.disable:
                log(f"epoch {epoch + 1} step {step} lr={lr:.4g} {fmt_metrics(means)}")
        at_ckpt = t.ckpt_every_steps > 0 and step % t.ckpt_every_steps == 0 and i < n - 1
        if run.diag is not None and (step % t.diag_every == 0 or i == n - 1 or at_ckpt):
            run.diag.flush(step, epoch + (i + 1) / n)
        if at_ckpt:  # mid-epoch: the epoch-end checkpoints follow train.ckpt_every
            now = time.perf_counter()
            p.train_time_s, mark = p.train_time_s + now - mark, now
            run.save(checkpoint_path(cfg.run_dir, epoch, step), sums)
    bar.close()
    log.bar = None
    now = time.perf_counter()
    p.train_time_s += now - mark
    p.samples_per_s = n_seen / max(now - start, 1e-9)
    p.batch = 0
    check_guard(run.guard, accelerator, cfg.run_dir)
    if run.diag is not None:
        run.diag.end_epoch(epoch + 1)
    names = sorted(sums)
    means_t = torch.stack([torch.as_tensor(sums[k], device=accelerator.device) for k in names]) / max(n, 1)
    return dict(zip(names, accelerator.reduce(means_t, reduction="mean").tolist(), strict=True))
