"""``eakd det demo``: EA-KD on real aerial tree images, on a CPU.

A Faster R-CNN teacher (ImageNet-pretrained MobileNetV2 backbone) is trained briefly on tiles of the two
large deepforest crops; then a slimmer student is trained for a shorter, equal budget three ways: alone,
with RoI-logit KD, with RoI-logit EA-KD. Box AP is measured on the two held-out 400x400 images. The
settings are the YAML files configs/det/trees_{teacher,student}.yaml; the runs go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

SETTINGS: dict[str, list[str]] = {
    "student": ["distill.method=none", "distill.weighting=none"],
    "kd": ["distill.method=kd", "distill.weighting=none"],
    "ea-kd": ["distill.method=kd", "distill.weighting=ea"],
}


def config_dir() -> Path:
    """configs/det of this source tree (else of the current folder)."""
    here = Path(__file__).resolve().parents[3] / "configs" / "det"
    return here if here.is_dir() else Path("configs") / "det"


def _train(config: Path, overrides: list[str]) -> dict[str, Any]:
    from eakd.engine.config import load_config
    from eakd.engine.loop import train

    return train(load_config(config, overrides))


def run_study(
    out: Path,
    seeds: list[int],
    settings: list[str],
    teacher_epochs: int | None = None,
    student_epochs: int | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """Train the teacher, then every setting x seed; finished runs found in ``out`` are reused.

    Returns {"teacher": summary, "runs": {setting: [summary per seed]}, "wall_s": {...}}; AP in percent.
    """
    cdir = config_dir()
    common = [f"experiment.output_dir={out}", *(extra or [])]
    walls: dict[str, float] = {}
    teacher_ckpt = out / "teacher" / "best.pt"
    t0 = time.perf_counter()
    if teacher_ckpt.is_file():
        summary = json.loads((out / "teacher" / "summary.json").read_text())
        print(f"reusing the teacher in {teacher_ckpt.parent}")
    else:
        epochs = [] if teacher_epochs is None else [f"train.epochs={teacher_epochs}"]
        summary = _train(cdir / "trees_teacher.yaml", [*common, "experiment.name=teacher", *epochs])
    walls["teacher"] = time.perf_counter() - t0
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in settings:
        runs[name] = []
        for seed in seeds:
            done = out / f"{name}-seed{seed}" / "summary.json"
            if done.is_file():  # finished earlier: resume a study where it stopped
                runs[name].append(json.loads(done.read_text()))
                print(f"reusing {done.parent}")
                continue
            t0 = time.perf_counter()
            overrides = [
                *common,
                f"experiment.name={name}-seed{seed}",
                f"experiment.seed={seed}",
                f"model.teacher_checkpoint={teacher_ckpt}",
                *SETTINGS[name],
                *([] if student_epochs is None else [f"train.epochs={student_epochs}"]),
            ]
            runs[name].append(_train(cdir / "trees_student.yaml", overrides))
            walls[f"{name}-seed{seed}"] = time.perf_counter() - t0
    result = {"teacher": summary, "runs": runs, "wall_s": walls}
    (out / "study.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def _stats(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:6.2f} ± {spread:4.2f}"


def format_table(result: dict[str, Any]) -> str:
    """A text table: AP / AP50 / AP75 (%) at the last epoch, mean ± std over seeds, best-epoch AP, time."""
    t = result["teacher"]["last"]["metrics"]
    lines = [
        f"teacher (last epoch): AP {t['AP']:.2f}  AP50 {t['AP50']:.2f}  AP75 {t['AP75']:.2f}",
        "",
        f"{'setting':<9} {'seeds':>5}  {'AP (last)':>13}  {'AP50 (last)':>13}  {'AP75 (last)':>13}"
        f"  {'AP (best ep.)':>13}  {'train s/run':>11}",
    ]
    for name, runs in result["runs"].items():
        last = [r["last"]["metrics"] for r in runs]
        best = [r["best"]["value"] for r in runs]
        secs = statistics.fmean(r["train_time_s"] for r in runs)
        lines.append(
            f"{name:<9} {len(runs):>5}  {_stats([m['AP'] for m in last]):>13}  "
            f"{_stats([m['AP50'] for m in last]):>13}  {_stats([m['AP75'] for m in last]):>13}  "
            f"{_stats(best):>13}  {secs:>11.0f}"
        )
    lines.append("")
    lines.append(
        "per seed (AP, last epoch): "
        + "; ".join(
            f"{name} " + ", ".join(f"{r['last']['metrics']['AP']:.2f}" for r in runs)
            for name, runs in result["runs"].items()
        )
    )
    lines.append(f"wall time: {sum(result['wall_s'].values()):.0f} s in all")
    return "\n".join(lines)


def demo(argv: list[str]) -> int:
    """``eakd det demo [--seeds 0 1 2] [--out DIR] [--threads N] [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="eakd det demo", description=__doc__.split("\n\n")[0])
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
    result = run_study(
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
        print(f"eakd det: unknown subcommand {argv[0]!r}; known: demo")
        return 2
    return demo(argv[1:])
