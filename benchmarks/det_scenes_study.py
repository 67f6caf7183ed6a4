"""Detection study on the Fashion-MNIST scenes (docs/studies.md): student alone, RoI-logit KD and EA-KD, the
FitNet-style FPN feature term unweighted and with EA's weights; 5 paired seeds, 16 for the feature pair.

    python benchmarks/det_scenes_study.py [--out runs/det_scenes] [--seeds 0 1 2 3 4] [--threads 2]
        [--arm-seeds feat=0-15 --arm-seeds ea-feat=0-15] [key=value ...]

Trains the MobileNetV2 teacher once on all 2,000 training scenes (det/scenes_teacher, its best epoch chosen
on the val split, then evaluated once on test), then the student (det/scenes_student: 500 labelled scenes)
per arm and seed with the same budget, each evaluated once on the test split after its last epoch, through
``eakd study``'s code path (``eakd.config_study``; each run's ``last_AP``, ``last_AP50``, ... in the file).
Amendment 1 gives feat and ea-feat seeds 0-15 (the default ``--arm-seeds``), and the study runs with 2
torch threads (the teacher, when retrained on a fresh machine, as it was first trained). Runs go
seed-major; results/det_scenes.json is saved after every run, and finished runs of the same protocol are
reused, so a stopped study resumes (``--reuse``; the teacher in OUT/teacher is reused once it finished).
docs/studies.md's table: ``python scripts/tables.py``.
"""

from __future__ import annotations

import sys

from eakd.detection.demo import demo

if __name__ == "__main__":
    args = sys.argv[1:]
    defaults = ["--data", "scenes", "--reuse"]
    defaults += [] if "--seeds" in args else ["--seeds", "0", "1", "2", "3", "4"]
    defaults += [] if "--out" in args else ["--out", "runs/det_scenes"]
    defaults += [] if "--results" in args else ["--results", "results/det_scenes.json"]
    defaults += [] if "--threads" in args else ["--threads", "2"]
    # amendment 1 (docs/studies.md): 16 paired seeds for the primary pair, feat and ea-feat
    defaults += [] if "--arm-seeds" in args else ["--arm-seeds", "feat=0-15", "--arm-seeds", "ea-feat=0-15"]
    sys.exit(demo([*defaults, *args]))
