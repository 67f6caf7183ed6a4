"""Fashion-MNIST study: the demo's setting (configs/demo) over 5 seeds for the student alone, KD, EA-KD
and the controls ER-KD (w = H_t at tau 4) and inverse weighting (emphasises confident samples).

Prints best and last top-1 (mean ± std over seeds) per setting and, for each weighting, its gain over
plain KD with a 95 % t-interval of the mean of the per-seed differences (the seeds pair the runs: same
initialisation and data order). The teacher is the demo's cached one (trained first if missing).

    python benchmarks/fmnist_study.py [--seeds 0 1 2 3 4] [--out runs/fmnist_study] [--jobs 2]
                                      [--student-epochs N] [-- key=value ...]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from eakd.stats import paired_interval
from eakd.vision.demo import SETTINGS, format_table, run_study, top1


def gains(runs: dict[str, list[dict]], reference: str = "kd") -> list[str]:
    """Lines: each weighting's best / last top-1 minus the reference's, paired by seed, 95 % interval."""
    if reference not in runs:
        return []
    ref = [top1(r) for r in runs[reference]]
    lines = []
    for setting, settings_runs in runs.items():
        if setting in (reference, "no-kd"):
            continue
        own = [top1(r) for r in settings_runs]
        parts = []
        for i, label in enumerate(("best", "last")):
            mean, half = paired_interval([o[i] for o in own], [r[i] for r in ref])
            parts.append(f"{label} {mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]")
        lines.append(f"{setting} - {reference} (95 % CI, {len(own)} paired seeds): " + "; ".join(parts))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(SETTINGS),
        default=["no-kd", "kd", "ea-kd", "er-kd", "inverse-kd"],
    )
    parser.add_argument("--out", type=Path, default=Path("runs/fmnist_study"))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument(
        "--student-epochs", type=int, help="students' epochs (default: configs/demo/kd.yaml's)"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (after --)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    epochs = [] if args.student_epochs is None else [f"train.epochs={args.student_epochs}"]
    result = run_study(args.out, args.seeds, args.settings, args.overrides, epochs, args.jobs, args.threads)
    text = "\n".join([format_table(result), "", *gains(result["runs"])])
    (args.out / "study.md").write_text(text + "\n")
    print(f"\n{text}\n\nwall time {time.perf_counter() - start:.0f} s; runs in {args.out}")


if __name__ == "__main__":
    main()
