"""Fashion-MNIST study: the demo's setting (configs/demo) over 5 seeds for the student alone, KD, EA-KD
and the controls ER-KD (w = H_t at tau 4) and inverse weighting (emphasises confident samples).

It is ``eakd demo`` with more seeds and arms: best and last top-1 (mean ± std over seeds) per arm and
each arm minus plain KD, paired by seed, with a 95 % t-interval (``eakd.study``). The teacher is the
demo's cached one (trained first if missing). Options after the defaults override them:

    python benchmarks/fmnist_study.py [--seeds 0 1 2 3 4] [--out runs/fmnist_study] [--student-epochs N]
"""

from __future__ import annotations

import sys

from eakd.vision.demo import main

DEFAULTS = ["--seeds", "0", "1", "2", "3", "4", "--out", "runs/fmnist_study"]
ARMS = ["--settings", "no-kd", "kd", "ea-kd", "er-kd", "inverse-kd"]

if __name__ == "__main__":
    sys.exit(main([*DEFAULTS, *ARMS, *sys.argv[1:]]))
