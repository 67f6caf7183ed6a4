"""Detection through the engine: ``task: detection`` from a config, trained and evaluated on tiny CSV data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eakd.detection import DATASETS, DetectionData, build_datasets
from eakd.engine.catalog import list_configs
from eakd.engine.config import DataConfig, load_config
from eakd.engine.logs import read_csv
from eakd.engine.loop import evaluate_run, train
from eakd.report import write_report

DETECTOR = (
    "{min_size: 64, max_size: 64, returned_layers: [2, 3, 4], anchor_sizes: [8, 16, 32, 64],"
    " fpn_channels: 16, representation_size: 32, rpn_post_nms_top_n_train: 50, rpn_post_nms_top_n_test: 20,"
    " box_batch_size_per_image: 32}"
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _csv_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["image_path,xmin,ymin,xmax,ymax,label"]
    for i in range(4):
        pixels = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        pixels[10:30, 12:40] = 220  # a bright "object"
        Image.fromarray(pixels).save(root / f"im{i}.png")
        rows += [f"im{i}.png,12,10,40,30,blob", f"im{i}.png,50,50,80,90,blob"]  # the second one is clipped
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")


def test_engine_trains_and_evaluates_a_detection_config(tmp_path: Path) -> None:
    _csv_data(tmp_path)
    config = tmp_path / "det.yaml"
    config.write_text(
        f"""
experiment: {{name: tiny, output_dir: {tmp_path / "runs"}}}
task: detection
data: {{name: csv, root: {tmp_path}, options: {{train_csv: boxes.csv, eval_csv: boxes.csv}}}}
model:
  student: mobilenet_v3_small
  teacher: mobilenet_v3_small
  teacher_checkpoint: random
  student_options: {DETECTOR}
  teacher_options: {DETECTOR}
distill: {{method: kd, weighting: ea, tau: 4.0, hparams: {{temperature: 1.0, feature_weight: 0.1}}}}
optim: {{name: sgd, lr: 0.01}}
schedule: {{name: constant}}
train: {{epochs: 1, batch_size: 2, num_workers: 0, cpu: true, log_every: 1, diag_every: 1, ckpt_every: 0}}
"""
    )
    cfg = load_config(config)
    summary = train(cfg)
    metrics = summary["last"]["metrics"]
    assert all(0 <= metrics[k] <= 100 for k in ("AP", "AP50", "AP75"))
    assert {"AP_small", "AP_medium", "AP_large"} <= set(metrics)
    # the per-RoI log (every diag_every = 1 step) and its plot in the run's report
    rows = read_csv(cfg.run_dir / "roi_weights.csv")
    assert len(rows) == 2 * 64 and {"weight", "iou", "teacher_maxprob", "label"} <= set(rows[0])
    assert all(0 <= float(r["iou"]) <= 1 and 0 < float(r["teacher_maxprob"]) <= 1 for r in rows)
    assert any(float(r["iou"]) == 1.0 for r in rows)  # torchvision adds the ground-truth boxes as RoIs
    report = write_report(cfg.run_dir)
    assert (cfg.run_dir / "roi_weights.png").is_file() and "roi_weights.png" in report.read_text()
    assert (cfg.run_dir / "best.pt").is_file()
    again = evaluate_run(cfg, cfg.run_dir / "best.pt")
    assert again["AP"] == pytest.approx(metrics["AP"])


@DATASETS.register("test_user_boxes")
def user_boxes(data: DataConfig) -> DetectionData:
    """A user's data set: three 24x32 images with one box each, in any format the sources allow."""
    image = torch.zeros(3, 24, 32, dtype=torch.uint8)
    items = [(image, {"boxes": [[4.0, 2.0, 20.0, 12.0]], "labels": [k % 2 + 1]}) for k in range(3)]
    return DetectionData(items, items[:1] if data.options.get("with_eval") else None, ["cat", "dog"])


def test_build_datasets_uses_a_user_registered_data_set() -> None:
    data = DataConfig(name="test_user_boxes", augment=False, train_subset=2, options={"size": [12, 16]})
    train_set, eval_set, names = build_datasets(data)
    assert names == ["cat", "dog"] and eval_set is None and len(train_set) == 2
    image, target = train_set[1]
    assert image.shape == (3, 12, 16) and image.dtype == torch.float32
    assert target["boxes"].tolist() == [[2.0, 1.0, 10.0, 6.0]] and target["labels"].tolist() == [2]
    data = DataConfig(name="test_user_boxes", options={"with_eval": True})
    assert len(build_datasets(data)[1]) == 1  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown detection data set 'test_user_box'.*test_user_boxes"):
        build_datasets(DataConfig(name="test_user_box"))


def test_demo_table_reports_mean_and_spread() -> None:
    from eakd.detection.demo import format_table

    def run(ap: float) -> dict:
        return {"last_AP": ap, "last_AP50": 2 * ap, "last_AP75": ap / 2, "best_AP": ap + 1, "train_s": 10.0}

    runs = {"student": {"0": run(1.0), "1": run(3.0)}, "kd": {"0": run(2.0), "1": run(5.0)}}
    teacher = {"last": {"metrics": {"AP": 9.0, "AP50": 18.0, "AP75": 4.5}}}
    result = {"teacher": teacher, "arms": ["student", "kd"], "seeds": [0, 1], "runs": runs}
    table = format_table(result)
    assert "teacher (last epoch): AP 9.00" in table
    assert "| student | 2 | 2.00 ± 1.41 | 4.00 ± 2.83 |" in table and "student 1.00, 3.00" in table
    assert "kd - student (95 % CI, 2 paired seeds): AP (last) +1.50 [" in table
    assert "AP (best ep.) +1.50 [" in table  # the eval set is the test set: every epoch evaluated


def test_scenes_demo_table_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from eakd.detection.demo import demo, format_table

    # evaluated once, on test: best_AP is that evaluation again; no box of COCO's large size (-1)
    run = {"last_AP": 4.0, "last_AP50": 8.0, "last_AP75": 2.0, "last_AP_small": 3.0, "last_AP_large": -1.0}
    run |= {"best_AP": 4.0, "train_s": 10.0}
    teacher = {
        "last": {"metrics": {"AP": 30.0, "AP50": 50.0, "AP75": 30.0}},
        "best": {"epoch": 6},
        "test": {"AP": 28.0, "AP50": 48.0, "AP75": 29.0},
    }
    result = {"teacher": teacher, "arms": ["student", "kd"], "seeds": [0], "runs": {"student": {"0": run}}}
    table = format_table(result)
    assert (
        "teacher (last epoch) on val: AP 30.00" in table and "epoch 6 by val AP) on test: AP 28.00" in table
    )
    assert "best ep." not in table and "large" not in table
    assert "| student | 1 | 4.00 ± 0.00 | 8.00 ± 0.00 | 2.00 ± 0.00 | 3.00 ± 0.00 | 10.00 ± 0.00 |" in table
    with pytest.raises(SystemExit) as stop:
        demo(["--data", "scenes", "--help"])
    assert stop.value.code == 0 and "--data {trees,scenes}" in capsys.readouterr().out


def test_a_study_refuses_runs_of_another_teacher() -> None:
    from eakd.detection.demo import check_teacher

    teacher = {"best": {"metric": "AP", "value": 58.7, "epoch": 6}}
    check_teacher(teacher, {"teacher": {"best": {"value": 58.7}}})
    check_teacher(teacher, {})  # an earlier result without a teacher: nothing to compare
    with pytest.raises(ValueError, match=r"best AP 58\.7, the earlier study's 55\.0"):
        check_teacher(teacher, {"teacher": {"best": {"value": 55.0}}})


def _tiny_demo_configs(root: Path) -> None:
    """A teacher and a student config of the tiny detector on ``_csv_data`` (eval set boxes.csv: "val"),
    and test.csv, a test split whose boxes sit on the detector's smallest anchors (8 px, stride 8), so that
    even a barely trained detector scores an AP > 0 there that varies with its seed (on val it scores 0)."""
    _csv_data(root)
    rows = ["image_path,xmin,ymin,xmax,ymax,label"]
    rows += [
        f"im{i}.png,{x - 4},{y - 4},{x + 4},{y + 4},blob"
        for i in range(2)
        for x in range(8, 64, 8)
        for y in (8, 24, 40, 56)
    ]
    (root / "test.csv").write_text("\n".join(rows) + "\n")
    run = f"""
task: detection
data: {{name: csv, root: {root}, augment: false, options: {{train_csv: boxes.csv, eval_csv: boxes.csv}}}}
optim: {{name: sgd, lr: 0.01}}
schedule: {{name: constant}}
train: {{epochs: 2, batch_size: 2, num_workers: 0, cpu: true, log_every: 1, diag_every: 1, ckpt_every: 0}}
"""
    (root / "teacher.yaml").write_text(
        f"model: {{student: mobilenet_v3_small, teacher: null, student_options: {DETECTOR}}}\n"
        f"distill: {{method: none, weighting: none, ce_weight: 1.0}}\n{run}"
    )
    (root / "student.yaml").write_text(
        "model: {student: mobilenet_v3_small, teacher: mobilenet_v3_small, teacher_checkpoint: random,"
        f" student_options: {DETECTOR}, teacher_options: {DETECTOR}}}\n"
        "distill: {method: kd, weighting: ea, tau: 4.0, ce_weight: 1.0, hparams: {temperature: 1.0}}\n"
        f"{run}"
    )


@pytest.mark.slow
def test_det_demo_runs_through_config_study(tmp_path: Path, monkeypatch, capsys) -> None:
    """``eakd det demo`` on a tiny detector: the students run through config_study (run_metrics' keys),
    each evaluated once, on the test split, after its last epoch; the table's intervals are the paired
    t-intervals of the per-run values; a distilled run still logs its RoIs and draws them."""
    from eakd.detection import demo as det_demo
    from eakd.stats import paired_interval

    _tiny_demo_configs(tmp_path)
    test = ("data.options.eval_csv=test.csv",)
    spec = det_demo.DemoData("teacher.yaml", "student.yaml", tmp_path / "runs", test=test)
    monkeypatch.setattr(det_demo, "config_dir", lambda: tmp_path)
    monkeypatch.setattr(det_demo, "demo_data", lambda name: spec)
    argv = ["--data", "scenes", "--seeds", "0", "1", "--settings", "student", "kd", "ea-kd"]
    assert det_demo.demo([*argv, "--results", str(tmp_path / "det.json")]) == 0
    table = capsys.readouterr().out
    result = json.loads((tmp_path / "det.json").read_text())
    assert result["definitions"]["ea-kd"] == det_demo.SETTINGS["ea-kd"]
    assert result["protocol"]["overrides"] == ["data.options.eval_csv=test.csv", "train.eval_every=2"]
    ap = {arm: [result["runs"][arm][s]["last_AP"] for s in "01"] for arm in ("student", "kd", "ea-kd")}
    assert len({v for vs in ap.values() for v in vs}) > 1  # the runs differ: the intervals can be wrong
    for arm, ref in (("kd", "student"), ("ea-kd", "kd")):
        mean, half = paired_interval(ap[arm], ap[ref])
        interval = f"AP (last) {mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"
        assert f"{arm} - {ref} (95 % CI, 2 paired seeds): {interval}" in table
    assert "best ep." not in table and "AP medium" not in table  # one evaluation; no medium box (-100)
    run = tmp_path / "runs" / "ea-kd-seed1"
    evals = [r for r in read_csv(run / "metrics.csv") if r["eval_AP"]]  # on test, after the last epoch only
    assert [r["epoch"] for r in evals] == ["2"] and float(evals[0]["eval_AP"]) == pytest.approx(
        ap["ea-kd"][1]
    )
    assert read_csv(run / "roi_weights.csv") and "roi_weights.png" in write_report(run).read_text()
    assert (tmp_path / "runs" / "report.md").is_file() and (
        tmp_path / "runs" / "teacher" / "test.json"
    ).is_file()
    # resumed from the results file: the teacher and every finished run are kept
    assert det_demo.demo([*argv, "--results", str(tmp_path / "det.json"), "--reuse"]) == 0
    again = capsys.readouterr().out
    assert "reusing the teacher" in again and "0 runs to do, 6 kept from earlier" in again
    assert json.loads((tmp_path / "det.json").read_text())["runs"] == result["runs"]
    # one arm extended by a seed (a study amended for more seeds): only that run is added
    assert (
        det_demo.demo([*argv, "--arm-seeds", "ea-kd=0-2", "--results", str(tmp_path / "det.json"), "--reuse"])
        == 0
    )
    assert "1 runs to do, 6 kept from earlier" in capsys.readouterr().out
    extended = json.loads((tmp_path / "det.json").read_text())
    assert extended["arm_seeds"] == {"student": [0, 1], "kd": [0, 1], "ea-kd": [0, 1, 2]}
    assert {a: sorted(r) for a, r in extended["runs"].items()} == {
        **{a: ["0", "1"] for a in ap},
        "ea-kd": ["0", "1", "2"],
    }
    assert all(extended["runs"][a][s] == result["runs"][a][s] for a in ap for s in "01")


def test_arm_seeds_replace_one_arms_seeds_and_refuse_an_unknown_arm() -> None:
    from eakd.detection.demo import arm_seeds

    assert arm_seeds([0, 1], [], ["kd", "feat"]) == [0, 1]
    assert arm_seeds([0, 1], ["feat=0-3"], ["kd", "feat"]) == {"kd": [0, 1], "feat": [0, 1, 2, 3]}
    for bad in ("ea-feat=0-3", "feat"):
        with pytest.raises(ValueError, match="give ARM=SEEDS with ARM one of kd, feat"):
            arm_seeds([0], [bad], ["kd", "feat"])


@pytest.mark.parametrize("name", [*list_configs("det/"), *list_configs("coco/")])
def test_packaged_detection_configs_load(name: str) -> None:
    load_config(name)  # teachers train alone (method none): refused without a ce_weight > 0


@pytest.mark.parametrize("student", ["scenes_student.yaml", "trees_student.yaml"])
def test_det_demo_settings_are_distinct_arms_of_the_student_config(student: str) -> None:
    from eakd.config_study import arm_configs
    from eakd.detection.demo import SETTINGS, config_dir

    configs = arm_configs(config_dir() / student, SETTINGS, ["model.teacher_checkpoint=random"])
    assert configs["ea-feat"].distill.hparams["feature_weight"] == 4.0
    assert configs["student"].distill.method == "none"
