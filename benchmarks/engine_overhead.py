"""The engine's own overhead: images per second of ``eakd.engine.loop.train`` against a minimal hand loop.

Contenders, on the same models, loss settings (eakd.DistillLoss: KD T 4, KD 0.9, CE 0.1, EA tau 3),
in-memory CIFAR-shaped data (N = batch x steps random 3x32x32 images, 100 classes), batch and SGD:
  engine          what `eakd train` runs: engine.loop.train with the ClassificationTask, one epoch of
                  --steps steps, logs and diagnostics at their default period (50 steps; the epoch's end
                  also flushes them and writes the epoch's samples file), no evaluation, no checkpoint
  engine-nodiag   the same with diagnostics off (train.diag_every 0)
  minimal         the loop an mdistiller user writes: for x, y in DataLoader: teacher forward under
                  no_grad, student forward, loss, backward, step (DistillLoss with its default checks)
Each repeat runs the three once, in a rotating order, in this process; a warm-up round first. A run is
timed whole (the engine's set-up, run folder and files included); the clock is this process's CPU time
(other processes' load does not inflate it; use --threads 1 on a shared machine), wall time is kept too.
Prints images/s and the ratio to the minimal loop (median of the per-repeat ratios). Target: the
engine within 3 % of the minimal loop with diagnostics at their default period.

    python benchmarks/engine_overhead.py [--repeats 5] [--steps 50] [--batch 64] [--threads 1]
        [--teacher resnet20] [--student resnet8] [--small] [--results results/engine_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from eakd import DistillLoss
from eakd.engine.config import load_config
from eakd.engine.loop import train
from eakd.study import provenance
from eakd.vision.models import create_model
from eakd.vision.task import ClassificationTask, split_output

CONTENDERS = ("engine", "engine-nodiag", "minimal")
LOSS = {"temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1, "tau": 3.0}


def minimal_epoch(
    student: torch.nn.Module, teacher: torch.nn.Module, data: TensorDataset, batch: int
) -> None:
    """One epoch of the hand-written loop (its own loader, loss and optimiser, as a user script has)."""
    loss_fn = DistillLoss("kd", "ea", **LOSS)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    student.train()
    for x, y in DataLoader(data, batch_size=batch, shuffle=True):
        with torch.no_grad():
            t_logits, _ = split_output(teacher(x))
        s_logits, _ = split_output(student(x))
        loss = sum(loss_fn(s_logits, t_logits, y).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def engine_epoch(task: ClassificationTask, folder: str, batch: int, diag_every: int) -> None:
    """One epoch of engine.loop.train (a fresh run in ``folder``; no evaluation, no checkpoint)."""
    cfg = load_config(
        None,
        [
            f"experiment.output_dir={folder}",
            "experiment.name=run",
            "model.student=resnet8",
            "distill.method=kd",
            "distill.weighting=ea",
            f"distill.tau={LOSS['tau']}",
            f"distill.kd_weight={LOSS['kd_weight']}",
            f"distill.ce_weight={LOSS['ce_weight']}",
            f"distill.hparams={{temperature: {LOSS['temperature']}}}",
            "schedule.name=constant",
            "train.epochs=1",
            f"train.batch_size={batch}",
            "train.num_workers=0",
            "train.eval_every=0",
            "train.ckpt_every=0",
            f"train.diag_every={diag_every}",
            "train.overwrite=true",
            "train.cpu=true",
        ],
    )
    train(cfg, task)


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of the three (default 5)")
    p.add_argument("--steps", type=int, default=50, help="steps per epoch (default 50, the diag period)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--small", action="store_true", help="smoke run: 2 repeats of 10 steps of batch 16")
    p.add_argument("--results", help="write the results JSON here (e.g. results/engine_overhead.json)")
    a = p.parse_args()
    if a.small:
        a.repeats, a.steps, a.batch = 2, 10, 16
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    load_start, start = os.getloadavg(), time.perf_counter()
    torch.manual_seed(0)
    n = a.batch * a.steps
    data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 100, (n,)))
    teacher = create_model(a.teacher, num_classes=100).eval().requires_grad_(False)
    student = create_model(a.student, num_classes=100)
    loss = DistillLoss("kd", "ea", sync_checks=False, **LOSS)  # as the engine's task builder makes it
    task = ClassificationTask(student, teacher, loss, data, None, ce_weight=LOSS["ce_weight"])
    with tempfile.TemporaryDirectory() as folder:
        runs: dict[str, Callable[[], None]] = {
            "engine": lambda: engine_epoch(task, folder, a.batch, 50),
            "engine-nodiag": lambda: engine_epoch(task, folder, a.batch, 0),
            "minimal": lambda: minimal_epoch(student, teacher, data, a.batch),
        }
        for name in CONTENDERS:  # warm-up: imports, allocator, first TensorBoard writer
            runs[name]()
        cpu: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        wall: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        for i in range(a.repeats):
            for name in CONTENDERS[i % 3 :] + CONTENDERS[: i % 3]:
                c, w = timed(runs[name])
                cpu[name].append(c)
                wall[name].append(w)
    contenders: dict[str, Any] = {}
    for name in CONTENDERS:
        contenders[name] = {
            "images_per_s_cpu": statistics.median(n / t for t in cpu[name]),
            "images_per_s_wall": statistics.median(n / t for t in wall[name]),
            "cpu_s": cpu[name],
            "wall_s": wall[name],
        }
        if name != "minimal":
            for clock, times in (("cpu", cpu), ("wall", wall)):
                paired = [m / e for e, m in zip(times[name], times["minimal"], strict=True)]
                contenders[name][f"ratio_{clock}"] = {
                    "median": statistics.median(paired),
                    "min": min(paired),
                    "max": max(paired),
                }
    result = {
        "setup": f"{a.teacher} -> {a.student}, batch {a.batch} x 3x32x32, 100 classes, {a.steps} steps/epoch",
        "threads": torch.get_num_threads(),
        "repeats": a.repeats,
        "steps": a.steps,
        "batch": a.batch,
        "images": n,
        "target": 0.97,
        "contenders": contenders,
        "wall_s": time.perf_counter() - start,
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "provenance": provenance(),
    }
    print(
        f"engine vs minimal loop: {result['setup']}, {result['threads']} thread(s), {a.repeats} repeats, "
        f"process CPU time (wall in brackets); load {load_start[0]:.1f} -> {result['loadavg_end'][0]:.1f}"
    )
    for name, c in contenders.items():
        line = f"  {name:<14} {c['images_per_s_cpu']:8.1f} img/s [{c['images_per_s_wall']:8.1f}]"
        if name != "minimal":
            r = c["ratio_cpu"]
            line += f"  engine/minimal {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f})"
            line += f" [{c['ratio_wall']['median']:.3f}]"
        print(line)
    if a.results:
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)
        Path(a.results).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
