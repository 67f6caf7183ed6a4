"""What EA costs in a whole training step: ResNet32x4 teacher -> ResNet8x4 student, CIFAR-shaped batch.

One step = the teacher's forward under no_grad, the student's forward and backward through the engine's
classification task (``ClassificationTask.training_step``), and an SGD step. The two contenders are the
same KD loss (T 4, CE 0.1, KD 0.9) unweighted and with EA weights (tau 3), on the same models, batch and
optimiser, interleaved step by step (the order alternating) in one process. Prints the median step time
of each and their ratio (target <= 1.01). On a CPU the clock is this process's CPU time, which other
processes' load does not inflate the way it inflates wall time (use --threads 1 on a shared machine:
with more threads their spin-waits count too); on a GPU it is wall time between synchronisations.

    python benchmarks/step_overhead.py [--repeats 20] [--batch 64] [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from eakd import DistillLoss
from eakd.vision.models import create_model
from eakd.vision.task import ClassificationTask

VARIANTS = ("kd", "ea-kd")


def classification_setup(
    device: torch.device, batch: int = 64, teacher: str = "resnet32x4", student: str = "resnet8x4"
) -> tuple[dict[str, ClassificationTask], torch.optim.Optimizer, tuple[torch.Tensor, torch.Tensor]]:
    """The step's parts, seeded: the tasks of ``VARIANTS`` (KD T 4, CE 0.1, KD 0.9; EA tau 3) sharing one
    frozen teacher and one student (100 classes), their SGD optimiser, and a CIFAR-shaped batch
    (images (batch, 3, 32, 32), labels (batch,)) on ``device``."""
    torch.manual_seed(0)
    t_model = create_model(teacher, num_classes=100).to(device).eval().requires_grad_(False)
    s_model = create_model(student, num_classes=100).to(device)
    common = {"temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1}
    tasks = {
        "kd": ClassificationTask(s_model, t_model, DistillLoss("kd", "none", **common), None, None),
        "ea-kd": ClassificationTask(s_model, t_model, DistillLoss("kd", "ea", tau=3.0, **common), None, None),
    }
    optimizer = torch.optim.SGD(s_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)
    s_model.train()
    return tasks, optimizer, (images, labels)


def train_step(
    task: ClassificationTask,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    autocast: AbstractContextManager[Any] | None = None,
) -> None:
    """One training step as the engine runs it: ``task.training_step`` (under ``autocast`` when given),
    backward of the summed terms, SGD step."""
    with autocast or nullcontext():
        terms = task.training_step(task.trainable, batch, 1.0)
    torch.stack([v.float() for v in terms.values()]).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per variant (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default 3)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else None
    device = device or torch.device(args.device)
    tasks, optimizer, batch = classification_setup(device, args.batch)

    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def step(task: ClassificationTask) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        train_step(task, optimizer, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - start

    for _ in range(args.warmup):
        for name in VARIANTS:
            step(tasks[name])
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for i in range(args.repeats):
        for name in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            times[name].append(step(tasks[name]))
    medians = {name: statistics.median(t) for name, t in times.items()}
    paired = statistics.median(e / k for e, k in zip(times["ea-kd"], times["kd"], strict=True))
    threads = (
        f", {torch.get_num_threads()} threads, process CPU time" if device.type == "cpu" else ", wall time"
    )
    print(
        f"full training step, ResNet32x4 -> ResNet8x4, batch {args.batch} x 3x32x32, 100 classes, "
        f"{device}{threads}, {args.repeats} interleaved repeats after {args.warmup} warm-up steps"
    )
    for name in VARIANTS:
        q = statistics.quantiles(times[name], n=4)
        print(f"  {name:<6} median {medians[name] * 1e3:9.2f} ms  (IQR {q[0] * 1e3:.2f}-{q[2] * 1e3:.2f} ms)")
    ratio = medians["ea-kd"] / medians["kd"]
    print(f"  ratio EA-KD / KD: {ratio:.4f} (of the medians), {paired:.4f} (median of paired ratios)")


if __name__ == "__main__":
    main()
