"""Fashion-MNIST study (protocol: docs/studies.md): the demo's setting (configs demo/*) over 5 seeds for the
student alone, KD, DKD and MLKD each with and without EA, and the controls ER-KD (w = H_t at tau 4) and
inverse weighting (emphasises confident samples).

It is ``eakd demo`` with more seeds and arms, saved after every run to results/fmnist_study.json (a
stopped study resumes with the runs it finished): best and last top-1 (mean ± std over seeds) per arm and
each arm minus its unweighted method, paired by seed, with a 95 % t-interval (``eakd.study``). Options
after the defaults override them:

    python benchmarks/fmnist_study.py [--seeds 0 1 2 3 4] [--out runs/fmnist_study] [--student-epochs N]
"""

from __future__ import annotations

import sys

from eakd.vision.demo import main

DEFAULTS = ["--seeds", "0", "1", "2", "3", "4", "--out", "runs/fmnist_study", "--reuse"]
ARMS = ["no-kd", "kd", "ea-kd", "er-kd", "inverse-kd", "dkd", "ea-dkd", "mlkd", "ea-mlkd"]

if __name__ == "__main__":
    args = [*DEFAULTS, "--settings", *ARMS, "--results", "results/fmnist_study.json", *sys.argv[1:]]
    sys.exit(main(args))
