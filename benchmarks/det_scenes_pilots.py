"""Pilots for the detection study on the Fashion-MNIST scenes: which recipe makes distillation transfer?

    python benchmarks/det_scenes_pilots.py [--only NAME ...] [--seeds 0] [--teacher PATH] [--out DIR]

Each pilot trains the scenes student (det/scenes_student) with the overrides of ``PILOTS[NAME]`` on top of
``BASE`` against a teacher checkpoint (default the study's, runs/det_scenes/teacher/best.pt: ``python
benchmarks/det_scenes_study.py`` trains it first), and evaluates it once, after its last epoch, on the VAL
split (the test split is never read here). Every finished pilot is saved to results/det_pilots.json at once
(setting, overrides, seed, teacher checkpoint with its epoch and val AP, val AP, AP50, AP75, AP by size,
train seconds, code version); a pilot already in that file with the same overrides and teacher is skipped.
docs/detection.md's pilot table is generated from the file (``python scripts/tables.py``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from eakd.detection.demo import SETTINGS, config_dir, scenes_dir
from eakd.engine.files import atomic_write_text
from eakd.study import code_label, provenance

RESULTS = Path("results/det_pilots.json")
TEACHER = Path("runs/det_scenes/teacher/best.pt")
# the study's student with 500 labelled images (the teacher had 2,000) and 500 steps of batch 4
BASE = ["data.train_subset=500", "train.epochs=4"]
PILOTS: dict[str, list[str]] = {  # in the order of priority
    "feat w=4": [*SETTINGS["student"], "distill.hparams.feature_weight=4.0"],
    "student": SETTINGS["student"],
    "ea-feat w=4": [*SETTINGS["ea-kd"], "distill.kd_weight=0", "distill.hparams.feature_weight=4.0"],
    "kd T=1": [*SETTINGS["kd"], "distill.hparams.temperature=1.0"],
    "kd T=4": [*SETTINGS["kd"], "distill.hparams.temperature=4.0"],
    "feat w=1": [*SETTINGS["student"], "distill.hparams.feature_weight=1.0"],
}


def teacher_info(path: Path) -> dict[str, Any]:
    """A teacher checkpoint's path, epoch and val AP (%) as its run saved them."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {"path": str(path), "epoch": int(state["epoch"]), "val_AP": float(state["metrics"]["AP"])}


def pilot(name: str, seed: int, out: Path, teacher: Path) -> dict[str, Any]:
    """Train one pilot; its record: name, overrides, seed, teacher, val metrics (%), train seconds."""
    from eakd.engine import load_config, train

    overrides = [*BASE, *PILOTS[name]]
    run = [
        f"data.root={scenes_dir()}",
        f"experiment.output_dir={out}",
        f"experiment.name={name.replace(' ', '_').replace('=', '')}-seed{seed}",
        f"experiment.seed={seed}",
        f"model.teacher_checkpoint={teacher}",
        "train.overwrite=true",
        *overrides,
    ]
    prov = provenance()  # the code the pilot runs
    epochs = load_config(config_dir() / "scenes_student.yaml", run).train.epochs
    summary = train(load_config(config_dir() / "scenes_student.yaml", [*run, f"train.eval_every={epochs}"]))
    metrics = summary["last"]["metrics"]
    keep = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
    return {
        "name": name,
        "overrides": overrides,
        "seed": seed,
        "teacher": teacher_info(teacher),
        "val": {k: float(metrics[k]) for k in keep if metrics.get(k, -1) >= 0},  # -1: no box of that size
        "train_s": float(summary["train_time_s"]),
        "code": prov["code"],
        "date": prov["date"],
    }


def pilot_table(result: dict[str, Any]) -> str:
    """Markdown: one row per pilot (in the order run) with its overrides on top of BASE, seed, val AP (%),
    train seconds and code version."""
    lines = [
        "| pilot | overrides (after BASE) | seed | teacher | val AP | AP50 | AP75 | AP small | AP medium "
        "| train s | code |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["pilots"]:
        extra = [o.removeprefix("distill.") for o in p["overrides"] if o not in BASE]
        val, t = p["val"], p["teacher"]
        cells = [f"{val.get(k, float('nan')):.2f}" for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium")]
        teacher = f"epoch {t['epoch']} (val AP {t['val_AP']:.1f})"
        overrides = " ".join(f"`{o}`" for o in extra)
        row = [p["name"], overrides, str(p["seed"]), teacher, *cells, f"{p['train_s']:.0f}"]
        lines.append("| " + " | ".join([*row, code_label(p)]) + " |")
    base = " ".join(f"`{o}`" for o in BASE)
    return "\n".join([*lines, "", f"BASE: {base} on det/scenes_student; val split (300 images), last epoch."])


def record_pilot(record: dict[str, Any]) -> None:
    """Add ``record`` to RESULTS under a lock (pilots may run in parallel processes), replacing an earlier
    record of the same name, seed and teacher."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "eakd_det_pilots.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"pilots": []}
        key = (record["name"], record["seed"], record["teacher"])
        result["pilots"] = [p for p in result["pilots"] if (p["name"], p["seed"], p["teacher"]) != key]
        result["pilots"].append(record)
        result["machine"] = provenance()["machine"]
        atomic_write_text(RESULTS, json.dumps(result, indent=1) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(PILOTS), help="pilots to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/det_pilots"))
    parser.add_argument("--teacher", type=Path, default=TEACHER, help=f"teacher best.pt (default {TEACHER})")
    args = parser.parse_args(argv)
    if not args.teacher.is_file():
        print(
            f"error: no teacher at {args.teacher}: run benchmarks/det_scenes_study.py first", file=sys.stderr
        )
        return 2
    teacher = teacher_info(args.teacher)
    torch.set_num_threads(1)
    for seed in args.seeds:
        for name in args.only or list(PILOTS):
            key = (name, seed, [*BASE, *PILOTS[name]], teacher)
            done = json.loads(RESULTS.read_text())["pilots"] if RESULTS.is_file() else []
            if any((p["name"], p["seed"], p["overrides"], p["teacher"]) == key for p in done):
                continue
            record = pilot(name, seed, args.out, args.teacher)
            record_pilot(record)
            print(f"pilot {name} seed {seed}: val AP {record['val']['AP']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
