"""Detection study on the Fashion-MNIST scenes: student alone vs RoI-logit KD vs EA-KD, 3 seeds.

    python benchmarks/det_scenes_study.py [--out runs/det_scenes] [--seeds 0 1 2] [key=value ...]

Trains the MobileNetV2 teacher once (det/scenes_teacher, evaluated on the val split), then
the student (det/scenes_student) per setting and seed with the same budget, each evaluated
once on the test split after its last epoch; finished runs of the same protocol are reused. Saves
results/det_scenes.json after every run (docs/studies.md's table: ``python scripts/tables.py``).
"""

from __future__ import annotations

import sys

from eakd.detection.demo import demo

if __name__ == "__main__":
    args = sys.argv[1:]
    defaults = ["--data", "scenes", "--reuse"]
    defaults += [] if "--seeds" in args else ["--seeds", "0", "1", "2"]
    defaults += [] if "--out" in args else ["--out", "runs/det_scenes"]
    defaults += [] if "--results" in args else ["--results", "results/det_scenes.json"]
    sys.exit(demo([*defaults, *args]))
