"""Why MLKD students collapse in the Fashion-MNIST study, and which MLKD recipe to use there: a pilot
judged on a validation split (5,000 training images outside the students' 6,000-image subset; never the
test set). Protocol and conclusions: docs/studies.md (amendment of the Fashion-MNIST study).

Each variant is an override list of demo/kd (as the study's arms are); the study's own budget (5 epochs,
batch 64, cosine) and teacher. The recipe chosen is the variant with the highest mean last validation
top-1 (``mlkd-lr0.025``, now ``eakd.vision.arms.MLKD``). Saved after every run to
results/fmnist_mlkd_pilot.json:

    python benchmarks/fmnist_mlkd_pilot.py [--seeds 0 3] [--jobs 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from eakd.config_study import config_study
from eakd.engine.config import load_config
from eakd.losses.logit import kd_loss
from eakd.losses.mlkd import mlkd_loss
from eakd.vision.arms import MLKD_CIFAR, SETTINGS
from eakd.vision.datasets import build_datasets
from eakd.vision.demo import config_dir, teacher_run, validation_task
from eakd.vision.models import create_model, load_checkpoint

VARIANTS: dict[str, list[str]] = {
    "kd": SETTINGS["kd"],
    "mlkd-lr0.05": [*MLKD_CIFAR, "distill.weighting=none"],  # the first study's MLKD (the demo's lr)
    "mlkd-lr0.025": [*MLKD_CIFAR, "distill.weighting=none", "optim.lr=0.025"],  # MLKD's CIFAR rate: chosen
    "mlkd-lr0.005": [*MLKD_CIFAR, "distill.weighting=none", "optim.lr=0.005"],
}


def loss_scale(teacher: Path, batches: int = 30) -> dict[str, float]:
    """What MLKD's loss weighs here: the teacher's top-1 (%) on the weak and the strong (AutoAugment) views
    of the student subset, and MLKD's terms per view (each summed over its 5 temperatures) beside plain
    KD's (T 4) for a freshly initialised student (seed 0), means over ``batches`` batches of 64."""
    torch.manual_seed(0)
    cfg = load_config(config_dir() / "kd.yaml", SETTINGS["mlkd"])
    train_set, _, _ = build_datasets(cfg.data)
    t_model = create_model(cfg.model.teacher, num_classes=10, in_channels=1).eval()
    load_checkpoint(t_model, teacher)
    student = create_model(cfg.model.student, num_classes=10, in_channels=1)
    sums = torch.zeros(9)
    n = 0
    with torch.no_grad():
        for i, (weak, strong, y) in enumerate(DataLoader(train_set, batch_size=64, shuffle=True)):
            if i == batches:
                break
            tw, ts = t_model(weak)[0], t_model(strong)[0]
            sw, ss = student(weak)[0], student(strong)[0]
            a, b = mlkd_loss(sw, tw), mlkd_loss(ss, ts)
            hits = [(tw.argmax(1) == y).sum() * 100.0 / len(y), (ts.argmax(1) == y).sum() * 100.0 / len(y)]
            terms = [a["kd"].mean(), a["cc"], a["bc"], b["kd"].mean(), b["cc"], b["bc"]]
            sums += torch.stack([*hits, *terms, kd_loss(sw, tw, 4.0).mean()]).float()
            n += 1
    names = ["teacher_top1_weak", "teacher_top1_strong", "weak_kd", "weak_cc", "weak_bc", "strong_kd"]
    names += ["strong_cc", "strong_bc", "kd_t4"]
    return {k: float(v) / n for k, v in zip(names, sums, strict=True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/fmnist_mlkd_pilot"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    teacher = teacher_run([])
    start = time.perf_counter()
    config_study(
        config_dir() / "kd.yaml", {v: VARIANTS[v] for v in args.variants}, args.seeds, args.out,
        [f"model.teacher_checkpoint={teacher['checkpoint']}"], {"split": "validation"}, args.jobs, 1, True,
        Path("results/fmnist_mlkd_pilot.json"),
        {"teacher": teacher, "scale": loss_scale(Path(teacher["checkpoint"]))}, task=validation_task,
    )  # fmt: skip
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
