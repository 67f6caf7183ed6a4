"""The LLM instruction-following study (docs/llm.md, "Protocol" and its amendment 1), to run on a machine
with time for it (minutes of CPU per run; seconds on a GPU):

    python benchmarks/llm_study.py                      # resumable: finished runs are kept
    python benchmarks/llm_study.py --stage 1            # the first comparison only (kd, ea-kd)

1. The teacher: SmolLM2-135M-Instruct fine-tuned with cross-entropy on the de-duplicated train split
   (all 30 layers, 3 epochs, lr 1e-4, the best validation ROUGE-L step), written once to
   runs/llm-study/teacher-sft/student and reused; its test ROUGE-L and perplexity once, beside it.
2. The study: ``eakd llm study``'s function (``eakd.llm.config_study.llm_study``) on llm/base in two
   stages (``STAGES``): kd and ea-kd on seeds 0-4, then kd-ce and ea-kd-ce on the same seeds; one
   teacher cache per tau, the shared warm start of a 6-layer student (``warm_start``: 180 cross-entropy
   steps, or 360, 540, 720 from the same init while the validation KL at start exceeds 2 nats, the
   protocol's check, in runs/llm-study/warm-start-STEPS),
   3 epochs, greedy validation at steps 60, 120 and 180, the test split decoded once per run at the selected
   step (``AMENDMENT``); saved after every run to runs/llm-study/study.json and results/llm_study.json,
   and resumed from them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eakd.config_study import parse_seeds
from eakd.llm.cli import read_run_config
from eakd.llm.config_study import llm_study
from eakd.llm.study import REFERENCE, method_arms, table

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("runs/llm-study")
# amendment 1 (docs/llm.md, fixed before the first run): two stages, validation every 60 steps, test once
STAGES = [["kd", "ea-kd"], ["kd-ce", "ea-kd-ce"]]
AMENDMENT = ["eval.every=60", "eval.test_last=false"]
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
# every run: llm/base (6-layer student, validation every 20 steps, 3 epochs) with the tuned teacher and the
# study's own warm start (``warm_start``: the shortest of 180, 360, ... steps within MAX_KL_AT_START)
COMMON = [f"model.teacher={TEACHER / 'student'}", *AMENDMENT]
WARM_START_STEPS = 180  # the protocol's warm start, lengthened by as much again while it starts too far away
MAX_KL_AT_START = 2.0  # nats per token, KL(teacher || student) on validation before distillation
MAX_WARM_STARTS = 4  # 180 .. 720 steps; beyond that the protocol's student is the wrong choice: stop


def warm_start_overrides(steps: int) -> list[str]:
    """The warm start of ``steps`` cross-entropy steps, in its own folder."""
    return [f"model.warm_start={OUT / f'warm-start-{steps}'}", f"model.warm_start_steps={steps}"]


def kl_at_start(steps: int) -> float:
    """The validation KL(teacher || student) of the warm start of ``steps`` steps (written first when
    missing), measured once and saved beside it (kl_at_start.json)."""
    folder = OUT / f"warm-start-{steps}"
    saved = folder / "kl_at_start.json"
    if not saved.is_file():
        from eakd.llm.models import load_teacher
        from eakd.llm.progress import QUIET
        from eakd.llm.run import split_rows, warm_start_student
        from eakd.llm.run_results import validation_fit

        cfg = read_run_config("llm/base", [*COMMON, *warm_start_overrides(steps)])
        teacher, tokenizer = load_teacher(cfg.model.teacher)
        student = warm_start_student(cfg, teacher, tokenizer, QUIET)
        fit = validation_fit(cfg, student, teacher, tokenizer, split_rows(cfg, tokenizer)[1], QUIET)
        saved.write_text(json.dumps(fit))
    return float(json.loads(saved.read_text())["kl"])


def warm_start(measure: Callable[[int], float] = kl_at_start) -> dict[str, Any]:
    """The protocol's check before any arm runs: the shortest warm start (180 steps, then 180 more at a
    time) whose validation KL at start is at most ``MAX_KL_AT_START``; {"steps", "kl", "tried"}.
    SystemExit when none of ``MAX_WARM_STARTS`` is."""
    tried = {}
    for steps in range(WARM_START_STEPS, WARM_START_STEPS * MAX_WARM_STARTS + 1, WARM_START_STEPS):
        tried[steps] = measure(steps)
        print(f"warm start of {steps} steps: validation KL at start {tried[steps]:.2f} nats", flush=True)
        if tried[steps] <= MAX_KL_AT_START:
            return {"steps": steps, "kl": tried[steps], "tried": tried}
    raise SystemExit(
        f"error: no warm start of up to {steps} steps brings the validation KL at start within "
        f"{MAX_KL_AT_START} nats ({tried}); the protocol's student needs rethinking before any arm runs"
    )


def tune_teacher() -> None:
    """Step 1, unless its student folder is already there."""
    if (TEACHER / "student" / "config.json").is_file():
        return
    from eakd.llm.run import run

    res = run(read_run_config("llm/base", TEACHER_SFT))
    best = res["validation"]["best"]
    print(f"teacher tuned: validation ROUGE-L {best['rougeL']:.2f} at step {best['step']}", flush=True)


def teacher_summary() -> dict[str, Any]:
    """The tuned teacher on the test split (ROUGE-L sampled and greedy, perplexity), evaluated once by the
    study's settings and saved beside it."""
    path = TEACHER / "test.json"
    if not path.is_file():
        from eakd.llm.evaluate import evaluate
        from eakd.llm.models import load_teacher
        from eakd.llm.run import split_rows

        cfg = read_run_config("llm/base", COMMON)  # the test split and generation settings only
        teacher, tokenizer = load_teacher(cfg.model.teacher)
        e, test = cfg.eval, split_rows(cfg, tokenizer)[2]
        res = evaluate(teacher, tokenizer, test, e.max_new_tokens, cfg.data.max_length, e.batch_size,
                       e.sampling_seeds, e.temperature)  # fmt: skip
        path.write_text(json.dumps({k: res[k] for k in ("rougeL", "rougeL_greedy", "perplexity")}))
    return json.loads(path.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", type=int, choices=[1, 2], default=2, help="run up to this stage (default 2)")
    p.add_argument("--seeds", default="0-4", help="training seeds: 0-4 or 0,1,2 (default 0-4)")
    a = p.parse_args()
    tune_teacher()
    start = warm_start()
    common = [*COMMON, *warm_start_overrides(start["steps"])]
    for stage in range(1, a.stage + 1):  # each stage adds its arms; the finished runs are kept
        methods = [m for arms in STAGES[:stage] for m in arms]
        report = {"metric": "best_rougeL", "reference": {m: r for m, r in REFERENCE.items() if m in methods}}
        info = {"teacher": teacher_summary(), "report": report, "warm_start": start}
        result = llm_study(
            "llm/base", method_arms(methods), parse_seeds(a.seeds), OUT, common, reuse=True,
            results=ROOT / "results" / "llm_study.json", info=info, teacher_cache=True,
        )  # fmt: skip
    print(table(result))


if __name__ == "__main__":
    main()
