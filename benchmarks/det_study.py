"""Detection study on the deepforest tree images: student alone vs RoI-logit KD vs EA-KD, 3 seeds.

    python benchmarks/det_study.py [--out runs/det_study] [--seeds 0 1 2] [key=value ...]

Trains the MobileNetV2 teacher once (det/trees_teacher), then the student
(det/trees_student) per setting and seed with the same budget; prints AP / AP50 / AP75 (%)
on the two held-out images (last epoch, mean ± std over seeds) and the wall time, and writes
study.json and results.txt in the output folder.
"""

from __future__ import annotations

import sys

from eakd.detection.demo import demo

if __name__ == "__main__":
    args = sys.argv[1:]
    defaults = [] if "--seeds" in args else ["--seeds", "0", "1", "2"]
    defaults += [] if "--out" in args else ["--out", "runs/det_study"]
    defaults += [] if "--reuse" in args else ["--reuse"]
    sys.exit(demo([*defaults, *args]))
