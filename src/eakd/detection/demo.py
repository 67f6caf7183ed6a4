"""``eakd det demo``: EA-KD on real aerial tree images, on a CPU.

A Faster R-CNN teacher (ImageNet-pretrained MobileNetV2 backbone) is trained briefly on tiles of the two
large deepforest crops; then a slimmer student is trained for a shorter, equal budget three ways: alone,
with RoI-logit KD, with RoI-logit EA-KD. Box AP is measured on the two held-out 400x400 images. The
settings are the YAML files configs/det/trees_{teacher,student}.yaml; the runs go to ``--out``.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from eakd.args import ArgumentParser
from eakd.study import run_study, study_table

SETTINGS: dict[str, list[str]] = {
    "student": ["distill.method=none", "distill.weighting=none"],
    "kd": ["distill.method=kd", "distill.weighting=none"],
    "ea-kd": ["distill.method=kd", "distill.weighting=ea"],
}


def config_dir() -> Path:
    """configs/det of this source tree (else of the current folder)."""
    here = Path(__file__).resolve().parents[3] / "configs" / "det"
    return here if here.is_dir() else Path("configs") / "det"


METRICS = {
    "AP": "AP (last)",
    "AP50": "AP50 (last)",
    "AP75": "AP75 (last)",
    "best_AP": "AP (best ep.)",
    "train_s": "train s/run",
}


def _train(config: Path, overrides: list[str]) -> dict[str, Any]:
    from eakd.engine import load_config, train

    return train(load_config(config, overrides))


def teacher_run(out: Path, common: list[str], teacher_epochs: int | None) -> dict[str, Any]:
    """The teacher in ``out/teacher``: reused when it finished earlier, else trained."""
    if (out / "teacher" / "best.pt").is_file():
        print(f"reusing the teacher in {out / 'teacher'}", flush=True)
        return json.loads((out / "teacher" / "summary.json").read_text())
    epochs = [] if teacher_epochs is None else [f"train.epochs={teacher_epochs}"]
    return _train(config_dir() / "trees_teacher.yaml", [*common, "experiment.name=teacher", *epochs])


def train_student(setting: str, seed: int, common: list[str], teacher: Path) -> dict[str, float]:
    """One student run (``setting`` of SETTINGS): box AP / AP50 / AP75 (%) at the last epoch, best AP."""
    overrides = [
        *common,
        f"experiment.name={setting}-seed{seed}",
        f"experiment.seed={seed}",
        f"model.teacher_checkpoint={teacher}",
        *SETTINGS[setting],
    ]
    summary = _train(config_dir() / "trees_student.yaml", overrides)
    last = summary["last"]["metrics"]
    return {
        "AP": last["AP"],
        "AP50": last["AP50"],
        "AP75": last["AP75"],
        "best_AP": float(summary["best"]["value"]),
        "train_s": float(summary["train_time_s"]),
    }


def demo_study(
    out: Path,
    seeds: list[int],
    settings: list[str],
    teacher_epochs: int | None = None,
    student_epochs: int | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """The teacher, then every setting x seed through ``eakd.study.run_study`` (finished runs of the same
    protocol are reused, so a stopped study resumes). The result has the teacher's summary under "teacher"."""
    common = [f"experiment.output_dir={out}", *(extra or [])]
    teacher = teacher_run(out, common, teacher_epochs)
    students = [*common, *([] if student_epochs is None else [f"train.epochs={student_epochs}"])]
    protocol = {"overrides": students, "teacher_epochs": teacher_epochs}
    train_one = partial(train_student, common=students, teacher=out / "teacher" / "best.pt")
    result = run_study(train_one, settings, seeds, out, protocol, reuse=True)
    result["teacher"] = teacher
    (out / "study.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def format_table(result: dict[str, Any]) -> str:
    """The teacher's AP, then ``eakd.study.study_table`` of the students' AP (%) against KD."""
    t = result["teacher"]["last"]["metrics"]
    reference = "kd" if "kd" in result["arms"] else None
    return "\n".join(
        [
            f"teacher (last epoch): AP {t['AP']:.2f}  AP50 {t['AP50']:.2f}  AP75 {t['AP75']:.2f}",
            "",
            study_table(result, METRICS, reference, compare=["AP", "AP50", "AP75", "best_AP"]),
        ]
    )


def demo(argv: list[str]) -> int:
    """``eakd det demo [--seeds 0 1 2] [--out DIR] [--threads N] [key=value ...]``."""
    parser = ArgumentParser(prog="eakd det demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="student seeds (default: 0)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument(
        "--out", type=Path, default=Path("runs/det_demo"), help="run folder (default runs/det_demo)"
    )
    parser.add_argument("--teacher-epochs", type=int, help="override the teacher config's epochs")
    parser.add_argument("--student-epochs", type=int, help="override the student config's epochs")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: robust on busy machines; 0 = torch's)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted config overrides for every run, e.g. train.cpu=false"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = demo_study(
        args.out, args.seeds, args.settings, args.teacher_epochs, args.student_epochs, args.overrides
    )
    table = format_table(result)
    (args.out / "results.txt").write_text(table + "\n")
    print(f"\n{table}\n(total {time.perf_counter() - t0:.0f} s; results in {args.out})")
    return 0


def main(argv: list[str]) -> int:
    """``eakd det demo ...`` (detection commands; evaluation is ``eakd eval RUN_DIR``)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: eakd det demo [options]   (eakd det demo --help)\n"
            "Evaluate detection runs with: eakd eval RUN_DIR"
        )
        return 0
    if argv[0] != "demo":
        raise ValueError(f"unknown subcommand {argv[0]!r}; known: demo (eakd det --help)")
    return demo(argv[1:])
