"""`eakd demo`: the teacher is trained once and cached, the students run per setting and seed, the table,
study.json and the report's plots appear; missing data is a clear error."""

import json

import pytest

from eakd.cli import main
from eakd.vision import demo
from eakd.vision.datasets import data_root, find_fashion_mnist

DATA_ROOT = data_root(None)  # the fetched data, read before the fixture moves $EAKD_CACHE

TINY = [
    "data.name=synthetic",
    "data.options={num_samples: 96, num_classes: 10, channels: 1, size: 28}",
    "data.train_subset=null",
    "train.epochs=1",
    "train.batch_size=32",
    "train.diag_every=1",
]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAKD_CACHE", str(tmp_path / "cache"))


def test_demo_on_synthetic_data(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["demo", "--out", str(out), "--jobs", "1", "--seeds", "0", "1", "--", *TINY]) == 0
    printed = capsys.readouterr().out
    table = (out / "results.md").read_text()
    assert table in printed
    for setting in demo.DEMO_SETTINGS:
        assert f"| {setting} " in table
        for seed in (0, 1):
            run = out / f"{setting}-seed{seed}"
            assert (run / "report.md").is_file() and (run / "curves.png").is_file()
            assert (out / "logs" / f"{setting}-seed{seed}.log").is_file()
            cfg = (run / "config.yaml").read_text()
            assert f"seed: {seed}" in cfg
    for plot in ("weights.png", "weight_hist.png", "entropy_scatter.png"):
        assert (out / "ea-kd-seed0" / plot).is_file()
    study = json.loads((out / "study.json").read_text())
    assert study["seeds"] == [0, 1] and set(study["runs"]) == set(demo.DEMO_SETTINGS)
    assert list(study["runs"]["kd"]) == ["0", "1"] and 0 <= study["runs"]["kd"]["1"]["best_top1"] <= 100
    assert "ea-kd - kd (95 % CI, 2 paired seeds)" in table
    # the teacher is cached (keyed by its settings) and reused by the next demo
    teachers = list((tmp_path / "cache" / "demo").glob("teacher-fmnist_cnn-*/best.pt"))
    assert len(teachers) == 1
    assert (
        main(["demo", "--out", str(out), "--jobs", "1", "--seeds", "0", "--settings", "ea-kd", "--", *TINY])
        == 0
    )
    assert "reusing the cached teacher" in capsys.readouterr().out


def test_settings_differ_only_in_the_distillation():
    configs = {s: demo.load_config(demo.config_dir() / "kd.yaml", demo.SETTINGS[s]) for s in demo.SETTINGS}
    assert configs["no-kd"].distill.method == "none" and configs["no-kd"].distill.ce_weight == 1.0
    assert configs["kd"].distill.weighting == "none"
    assert configs["ea-kd"].distill.weighting == "ea" and configs["ea-kd"].distill.tau == 3.0
    assert (configs["er-kd"].distill.weighting, configs["er-kd"].distill.tau) == ("er", 4.0)
    students = {s: c.model.student for s, c in configs.items()}
    assert {s for s, student in students.items() if student != "fmnist_tiny"} == {"kd-het", "ea-kd-het"}


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    assert main(["demo", "--out", str(tmp_path / "runs"), "--", f"data.root={empty}"]) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found" in err and "make fetch" in err and str(empty) in err


@pytest.mark.slow
@pytest.mark.skipif(find_fashion_mnist() is None, reason="needs Fashion-MNIST: make fetch")
def test_demo_on_fashion_mnist(tmp_path):
    """The real data, teacher and students with two processes; one seed, the students for one epoch."""
    out = tmp_path / "runs"
    argv = [
        "demo",
        "--out",
        str(out),
        "--seeds",
        "0",
        "--student-epochs",
        "1",
        "--",
        f"data.root={DATA_ROOT}",
    ]
    assert main(argv) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["teacher"]["best"]["value"] > 85
    for runs in study["runs"].values():
        assert runs["0"]["best_top1"] > 50
