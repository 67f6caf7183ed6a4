"""Fashion-MNIST study (protocol and its amendment: docs/studies.md): the demo's setting (configs demo/*)
for every arm of ``eakd.vision.arms`` (KD, DKD, MLKD with and without EA, the paper's ablations, LS, CTKD,
a heterogeneous pair): 20 paired seeds for the primary arms, 10 for the others, seed-major, 2 runs at a
time of 1 thread each.

Saved after every run to results/fmnist_study.json, which is also where it resumes from (on any machine):
the runs of an arm whose override list is unchanged are kept, an arm whose list changed is rerun whole,
and a teacher (rebuilt from its settings) whose top-1 differs from the file's is refused. Prints the
study table and the paper's claims beside the measured differences (``python scripts/tables.py`` puts
both into the docs):

    python benchmarks/fmnist_study.py [--arms kd ea-kd ...] [--primary-seeds 20] [--other-seeds 10]
        [--jobs 2] [--out runs/fmnist_study] [--results results/fmnist_study.json] [-- key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from eakd.study import claims_table
from eakd.vision.arms import PAPER_CLAIMS, STUDY_ARMS, study_seeds
from eakd.vision.demo import demo_study, format_table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="The Fashion-MNIST study (docs/studies.md).")
    parser.add_argument("--arms", nargs="+", choices=STUDY_ARMS, default=STUDY_ARMS)
    parser.add_argument("--primary-seeds", type=int, default=20, help="seeds 0..N-1 of the primary arms")
    parser.add_argument("--other-seeds", type=int, default=10, help="seeds 0..N-1 of the other arms")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, 1 torch thread each")
    parser.add_argument("--out", type=Path, default=Path("runs/fmnist_study"))
    parser.add_argument("--results", type=Path, default=Path("results/fmnist_study.json"))
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (after --)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    seeds = study_seeds(args.primary_seeds, args.other_seeds)
    result = demo_study(
        args.out,
        {arm: seeds[arm] for arm in args.arms},
        args.arms,
        args.overrides,
        jobs=args.jobs,
        results=args.results,
        reuse=True,
    )
    claims = claims_table(result, PAPER_CLAIMS, "last_top1", "last top-1 (pp)")
    print(f"\n{format_table(result)}\n\n{claims}\n\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
