"""`eakd study`: a tiny study end to end (run, interrupted, resumed with its finished runs kept; its report's
intervals are the paired t-intervals of the per-run values), the default arms, bad input refused in one
line with nothing lost, and a Fashion-MNIST results file of today's layout resumed with its runs kept."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import pytest

from eakd import config_study
from eakd.cli import main
from eakd.engine.config import load_config
from eakd.stats import paired_interval, seeds_needed
from eakd.study_report import write_study_report

ROOT = Path(__file__).resolve().parents[1]
TINY = """\
experiment: {name: tiny, output_dir: runs}
data: {name: synthetic, options: {num_samples: 64, num_classes: 4, channels: 1, size: 8}}
model: {student: fmnist_tiny, teacher: fmnist_cnn, teacher_checkpoint: random}
distill: {method: kd, weighting: ea, hparams: {temperature: 4.0}}
train: {epochs: 1, batch_size: 32, num_workers: 0, ckpt_every: 0, diag_every: 0, cpu: true}
"""
ARMS = ["--arm", "kd=distill.weighting=none", "--arm", "ea-kd=distill.weighting=ea,distill.tau=2.0"]


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EAKD_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tiny.yaml").write_text(TINY)
    return tmp_path


def test_arms_and_seeds_parse():
    assert config_study.parse_arm("kd") == ("kd", [])
    name, overrides = config_study.parse_arm("dkd=distill.method=dkd,distill.hparams={alpha: 1.0, beta: 8.0}")
    assert name == "dkd" and overrides == ["distill.method=dkd", "distill.hparams={alpha: 1.0, beta: 8.0}"]
    assert config_study.parse_seeds("0-2,7") == [0, 1, 2, 7] and config_study.parse_seeds("3") == [3]
    for bad, match in (("", "no seed"), ("0-2,2", "given twice"), ("4-1", "not a seed"), ("a", "not a seed")):
        with pytest.raises(ValueError, match=match):
            config_study.parse_seeds(bad)
    with pytest.raises(ValueError, match="arm name"):
        config_study.parse_arm("../x=distill.tau=1")


def test_default_arms_compare_the_method_unweighted_with_ea_and_er(tiny):
    cfg = load_config("tiny.yaml")
    arms = config_study.default_arms(cfg)
    assert list(arms) == ["kd", "ea-kd", "er-kd"]
    configs = config_study.arm_configs("tiny.yaml", arms, [])
    assert [c.distill.weighting for c in configs.values()] == ["none", "ea", "er"]
    assert configs["er-kd"].distill.tau is None  # ER's published tau 4, not the config's
    with pytest.raises(ValueError, match="distils nothing"):
        config_study.default_arms(load_config("tiny.yaml", ["distill.method=none", "distill.ce_weight=1.0"]))


def test_a_tiny_study_is_interrupted_resumed_and_reported(tiny, monkeypatch, capsys):
    real, calls = config_study.train_arm, []

    def stopped_at_the_fourth(arm, seed, *args, **kwargs):
        calls.append((arm, seed))
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C in the fourth run
        return real(arm, seed, *args, **kwargs)

    monkeypatch.setattr(config_study, "train_arm", stopped_at_the_fourth)
    argv = ["study", "tiny.yaml", *ARMS, "--seeds", "0-2", "--out", "study", "--effect", "1.0"]
    assert main(argv) == 130
    first = json.loads((tiny / "study" / "study.json").read_text())
    assert calls == [("kd", 0), ("ea-kd", 0), ("kd", 1), ("ea-kd", 1)]  # seed-major
    assert {a: list(r) for a, r in first["runs"].items()} == {"kd": ["0", "1"], "ea-kd": ["0"]}
    assert main(argv) == 2  # the folder holds a study: only --resume continues it
    assert "holds a study already" in capsys.readouterr().err

    calls.clear()
    monkeypatch.setattr(config_study, "train_arm", real)
    assert main([*argv, "--resume"]) == 0
    result = json.loads((tiny / "study" / "study.json").read_text())
    for arm, runs in first["runs"].items():
        for seed, metrics in runs.items():
            assert result["runs"][arm][seed] == metrics  # kept, not rerun
    assert "3 runs to do, 3 kept from earlier" in capsys.readouterr().out
    assert result["definitions"]["ea-kd"] == ["distill.weighting=ea", "distill.tau=2.0"]
    assert result["arm_seeds"] == {"kd": [0, 1, 2], "ea-kd": [0, 1, 2]}

    report = (tiny / "study" / "report.md").read_text()
    assert (tiny / "study" / "differences.png").stat().st_size > 0
    kd = [result["runs"]["kd"][s]["last_top1"] for s in "012"]
    ea = [result["runs"]["ea-kd"][s]["last_top1"] for s in "012"]
    mean, half = paired_interval(ea, kd)
    sd = statistics.stdev([a - b for a, b in zip(ea, kd, strict=True)])
    row = re.search(r"^\| ea-kd - kd \| 3 \| (.*) \|$", report, re.M)
    assert row is not None
    need = seeds_needed(sd, 1.0) if sd > 0 else 2
    cells = [f"{mean:+.2f}", f"[{mean - half:+.2f}, {mean + half:+.2f}]"]
    assert row[1].split(" | ")[:2] == cells and row[1].split(" | ")[3:] == [f"{sd:.2f}", str(need)]
    assert f"| kd | 3 | {statistics.fmean(kd):.2f} ± {statistics.stdev(kd):.2f} |" in report
    # `eakd report STUDY_DIR` writes the same report again
    (tiny / "study" / "report.md").unlink()
    assert main(["report", "study"]) == 0
    assert (tiny / "study" / "report.md").read_text() == report


BAD = [
    (["--arm", "a=distill.weightng=none", "--arm", "b"], "'distill.weightng' (did you mean"),
    (["--arm", "a=distill.weighting=ea", "--arm", "b"], "give the same config"),
    (["--arm", "a", "--arm", "a=distill.tau=2"], "given twice"),
    (["--arm", "a=experiment.seed=3", "--arm", "b"], "sets 'experiment.seed=3'"),
    (["--seeds", ","], "no seed given"),
    (["--seeds", "0,1,1"], "given twice"),
    (["--reference", "nosuch"], "is not an arm"),
    (["train.epochs=2", "--resume"], "holds another study (config differs in train.epochs)"),
    (["--resume", "--arm", "kd=distill.weighting=none", "--arm", "ea-kd=distill.weighting=ea"], "mixed"),
    (["--out", "study/kd-seed0"], "holds files but no study"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_loses_nothing(tiny, monkeypatch, capsys, args, message):
    monkeypatch.setattr(config_study, "train_arm", fake_train_arm)
    assert main(["study", "tiny.yaml", *ARMS, "--seeds", "0-1", "--out", "study"]) == 0
    before = {p: p.read_bytes() for p in (tiny / "study").rglob("*") if p.is_file()}
    capsys.readouterr()
    argv = ["study", "tiny.yaml", *(ARMS if "--arm" not in args else []), "--seeds", "0-1", "--out", "study"]
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert {p: p.read_bytes() for p in (tiny / "study").rglob("*") if p.is_file()} == before


def fake_train_arm(arm: str, seed: int, *args, **kwargs) -> dict[str, float]:
    """A run's metrics without training (for the tests of plans, refusals and resumption)."""
    out = kwargs.get("out", args[3] if len(args) > 3 else Path("."))
    (Path(out) / f"{arm}-seed{seed}").mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{arm}-seed{seed}" / "summary.json").write_text("{}")
    value = 70.0 + seed + len(arm) / 10
    return {"best_top1": value, "last_top1": value, "train_s": 1.0, "params": 13726.0, "steps": 470.0}


def test_a_fmnist_results_file_of_todays_layout_resumes_with_its_runs_kept(tmp_path, monkeypatch):
    """The layout results/fmnist_study.json had on 2026-12-03 (a copy under tests/data): the study resumes
    from it through today's code, keeps every run of an unchanged arm, reruns only what is missing or was
    defined otherwise, and keeps the file's keys."""
    from eakd.vision import arms, demo

    results = tmp_path / "results" / "fmnist_study.json"
    results.parent.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "fmnist_study_2026-12-03.json", results)
    before = json.loads(results.read_text())
    monkeypatch.setattr(demo, "teacher_run", lambda common: {**before["teacher"], "checkpoint": "t.pt"})
    calls: list[tuple[str, int]] = []

    def recorded(arm, seed, *args, **kwargs):
        calls.append((arm, seed))
        return fake_train_arm(arm, seed, *args, **kwargs)

    monkeypatch.setattr(config_study, "train_arm", recorded)
    seeds = arms.study_seeds()
    result = demo.demo_study(tmp_path / "runs", seeds, arms.STUDY_ARMS, results=results, reuse=True)
    kept = [a for a in before["runs"] if before["definitions"][a] == arms.SETTINGS[a]]
    assert set(kept) == {"no-kd", "kd", "ea-kd", "er-kd", "inverse-kd", "dkd", "ea-dkd"}
    for arm in kept:
        assert all(result["runs"][arm][s] == m for s, m in before["runs"][arm].items())
        assert not any((arm, int(s)) in calls for s in before["runs"][arm])
    assert ("mlkd", 0) in calls  # its override list changed: rerun whole
    assert len(calls) == sum(map(len, seeds.values())) - 35
    after = json.loads(results.read_text())
    assert set(before) <= set(after) and after["protocol"] == before["protocol"]
    assert after["teacher"]["last"] == before["teacher"]["last"] and after["arm_seeds"] == seeds
    assert after["seeds"] == list(range(20)) and [s for _, s in calls] == sorted(s for _, s in calls)
    report = write_study_report(tmp_path / "runs").read_text()  # each arm against its reference
    assert "| ea-dkd - dkd | 20 |" in report and "| no-kd - kd | 10 |" in report


def test_verdicts_read_lower_as_better_for_perplexity_kl_and_loss():
    from eakd.study import higher_is_better, verdict

    assert higher_is_better("last_top1") and higher_is_better("best_AP") and higher_is_better("skl_top1")
    assert not any(map(higher_is_better, ["best_perplexity", "val_kl", "kl_rest", "train_loss", "test_ppl"]))
    assert verdict(-2.0, 1.0) == "worse" and verdict(-2.0, 1.0, higher=False) == "better"
    assert verdict(2.0, 1.0, higher=False) == "worse"
    assert verdict(0.5, 1.0, higher=False) == "no difference shown"


def test_a_comparison_of_one_paired_seed_has_no_interval_and_two_have_one():
    from eakd.study import study_table

    runs = {"kd": {"0": {"acc": 70.0}, "1": {"acc": 71.0}}, "ea-kd": {"0": {"acc": 72.0}}}
    one = study_table({"arms": ["kd", "ea-kd"], "runs": runs}, {"acc": "top-1"}, "kd")
    assert "ea-kd - kd (95 % CI, 1 paired seeds): top-1 +2.00 (no interval)" in one and "nan" not in one
    runs["ea-kd"]["1"] = {"acc": 72.0}
    diffs = [2.0, 1.0]
    mean, half = paired_interval([72.0, 72.0], [70.0, 71.0])
    two = study_table({"arms": ["kd", "ea-kd"], "runs": runs}, {"acc": "top-1"}, "kd")
    assert mean == statistics.fmean(diffs)
    assert f"top-1 +{mean:.2f} [{mean - half:+.2f}, {mean + half:+.2f}] -> no difference shown" in two
