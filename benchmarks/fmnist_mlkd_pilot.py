"""Why MLKD students collapse in the Fashion-MNIST study, and which MLKD recipe to use there: a pilot
judged on a validation split (5,000 training images outside the students' 6,000-image subset; never the
test set). Protocol and conclusions: docs/studies.md (amendment of the Fashion-MNIST study).

Each variant is an override list of demo/kd (as the study's arms are); the study's own budget (5 epochs,
batch 64, cosine) and teacher. Saved after every run to results/fmnist_mlkd_pilot.json:

    python benchmarks/fmnist_mlkd_pilot.py [--seeds 0 3] [--jobs 2]
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import torch

from eakd.study import run_study
from eakd.vision.demo import MLKD_CIFAR, SETTINGS, teacher_run, train_student

VARIANTS: dict[str, list[str]] = {
    "kd": SETTINGS["kd"],
    "mlkd-lr0.05": [*MLKD_CIFAR, "distill.weighting=none"],  # the first study's MLKD (the demo's lr)
    "mlkd-lr0.025": [*MLKD_CIFAR, "distill.weighting=none", "optim.lr=0.025"],  # MLKD's CIFAR rate
    "mlkd-lr0.005": [*MLKD_CIFAR, "distill.weighting=none", "optim.lr=0.005"],
    "mlkd-one-view": [*MLKD_CIFAR, "distill.weighting=none", "data.two_views=false"],  # no strong view
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/fmnist_mlkd_pilot"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    teacher = teacher_run([])
    train_one = partial(
        train_student,
        out=args.out,
        common=[],
        teacher=Path(teacher["checkpoint"]),
        arms=VARIANTS,
        validation=True,
    )
    protocol = {"split": "validation", "variants": {v: VARIANTS[v] for v in args.variants}}
    start = time.perf_counter()
    run_study(
        train_one, args.variants, args.seeds, args.out, protocol, args.jobs, 1, True,
        Path("results/fmnist_mlkd_pilot.json"), {"teacher": teacher},
    )  # fmt: skip
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
