"""The language-model distillation study of docs/llm.md ("Language-model distillation"): its pilot on the
validation speeches, then the study on the held-out speeches and Moby Dick.

    python benchmarks/llm_lm_study.py pilot [NAME ...]   # the pilot runs (default: all of PILOT)
    python benchmarks/llm_lm_study.py study              # 5 arms x 5 seeds, resumable

Both save after every run (results/llm_lm_pilot.json, results/llm_lm_study.json) and skip what their file
already holds: a stopped study resumes from the committed results file, on a fresh machine too (the
student and the teacher caches are rebuilt deterministically under runs/llm-lm-*). --threads N sets
torch's threads (default: torch's own).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from eakd.engine.files import atomic_write_text
from eakd.llm.lm_study import (
    ARMS,
    LMSettings,
    Setup,
    initial_student,
    lm_study,
    prepare,
    student_metrics,
    train_one,
)
from eakd.llm.models import num_params
from eakd.study import provenance

RESULTS = Path("results")
# the pilot: one training-block set (seed 0) and the validation speeches only; each run changes these keys
PILOT_BASE = LMSettings(eval_sets=("validation",), train_blocks=256, batch_size=4)
PILOT_START = [6, 10, 15, 20]  # student depths whose validation metrics before any training are recorded
PILOT: dict[str, dict[str, object]] = {
    "L6-lr5e-4": {"layers": 6, "lr": 5e-4},
    "L6-lr2e-3": {"layers": 6, "lr": 2e-3},
}
STUDY = LMSettings(layers=6, lr=2e-3, train_blocks=512, batch_size=4)  # chosen by the pilot (docs/llm.md)
SEEDS = [0, 1, 2, 3, 4]


def pilot(names: list[str]) -> None:
    """The kd arm (seed 0) at each named PILOT setting, and the untrained students of PILOT_START, on the
    validation speeches; saved to results/llm_lm_pilot.json after each (entries already there are kept)."""
    path = RESULTS / "llm_lm_pilot.json"
    result = json.loads(path.read_text()) if path.is_file() else {"base": {}, "start": {}, "runs": {}}
    base = prepare(PILOT_BASE, Path("runs/llm-lm-pilot"), ["kd"])
    result["base"] = dataclasses.asdict(PILOT_BASE)

    begin, wall = time.perf_counter(), result.get("wall_s", 0.0)

    def save() -> None:
        result["provenance"] = provenance()
        result["wall_s"] = wall + time.perf_counter() - begin  # the pilot's time over all its sittings
        atomic_write_text(path, json.dumps(result, indent=1) + "\n")

    for layers in PILOT_START:
        if str(layers) not in result["start"]:
            setup = with_settings(base, layers=layers)
            student = initial_student(setup)
            result["start"][str(layers)] = {
                **student_metrics(setup, student, teacher=True),
                "params": num_params(student),
            }
            save()
            print(f"start L{layers}: {result['start'][str(layers)]}", flush=True)
    for name in names:
        if name in result["runs"]:
            continue
        start = time.perf_counter()
        metrics = train_one(with_settings(base, **PILOT[name]), "kd", 0)
        result["runs"][name] = {"changes": PILOT[name], **metrics, "run_s": time.perf_counter() - start}
        save()
        print(f"{name}: {result['runs'][name]}", flush=True)


def with_settings(setup: Setup, **changes: object) -> Setup:
    """``setup`` with other student settings (the rows and caches stay: only depth and lr change)."""
    return dataclasses.replace(setup, settings=dataclasses.replace(setup.settings, **changes))


def study() -> None:
    """Every arm of ``ARMS`` x SEEDS with the STUDY settings, resumed from results/llm_lm_study.json."""
    setup = prepare(STUDY, Path("runs/llm-lm-study"))
    lm_study(setup, list(ARMS), SEEDS, results=RESULTS / "llm_lm_study.json", reuse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["pilot", "study"])
    parser.add_argument("names", nargs="*", help=f"pilot runs (default all): {', '.join(PILOT)}")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = set(args.names) - set(PILOT)
    if unknown or (args.names and args.what == "study"):
        parser.error(f"unknown pilot run(s) {sorted(unknown)}; known: {', '.join(PILOT)}")
    pilot(args.names or list(PILOT)) if args.what == "pilot" else study()


if __name__ == "__main__":
    main()
