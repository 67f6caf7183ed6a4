"""The LLM instruction-following study with its full protocol (docs/llm.md, "Protocol"), to run on a machine
with time for it (hours of CPU per run; minutes on a GPU):

    python benchmarks/llm_study.py                      # resumable: finished runs are kept (--reuse)

1. The teacher: SmolLM2-135M-Instruct fine-tuned with cross-entropy on the de-duplicated train split
   (all 30 layers, 3 epochs, lr 1e-4, the best validation ROUGE-L step), written once to
   runs/llm-study/teacher-sft/student and reused.
2. The study (``eakd llm demo`` with these defaults): the protocol's seven arms (``ARMS``, of
   ``eakd.llm.study.METHODS``; its on-policy arms gkd and ea-gkd are not in this protocol)
   x 5 seeds, one teacher cache per tau, the shared 180-step warm start of a 6-layer student, 3 epochs,
   validation every 20 steps; saved after every run to runs/llm-study/study.json and
   results/llm_study.json. Every option of the demo is accepted after these and overrides them, e.g.
   ``--methods kd ea-kd --seeds 0 1 2`` (the first comparison) or ``--out DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from eakd.llm.cli import demo, read_run_config

OUT = Path("runs/llm-study")
ARMS = ["kd", "ea-kd", "ea-kd-tau1", "kd-ce", "ea-kd-ce", "inverse-kd", "ea-kd-norm"]  # the fixed protocol's
TEACHER = OUT / "teacher-sft"
TEACHER_SFT = [
    "model.student_layers=30",  # all the teacher's layers: the teacher itself, trained
    "model.warm_start=null",
    "model.warm_start_steps=0",
    "train.weighting=none",
    "train.kd_weight=0.0",
    "train.ce_weight=1.0",
    "train.learning_rate=1e-4",
    f"train.output_dir={TEACHER}",
]
DEFAULTS = [
    "--config", "llm/base", "--steps", "-1", "--warm-start-steps", "180", "--eval-every", "20",
    "--seeds", "0", "1", "2", "3", "4", "--methods", *ARMS, "--out", str(OUT), "--teacher-cache",
    "--eval-teacher", "--results", "results/llm_study.json", "--reuse",
    f"model.teacher={TEACHER / 'student'}",
]  # fmt: skip


def tune_teacher() -> None:
    """Step 1, unless its student folder is already there."""
    if (TEACHER / "student" / "config.json").is_file():
        return
    from eakd.llm.run import run

    res = run(read_run_config("llm/base", TEACHER_SFT))
    best = res["validation"]["best"]
    print(f"teacher tuned: validation ROUGE-L {best['rougeL']:.2f} at step {best['step']}", flush=True)


if __name__ == "__main__":
    tune_teacher()
    sys.exit(demo([*DEFAULTS, *sys.argv[1:]]))
