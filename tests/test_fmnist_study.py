"""The Fashion-MNIST study's plan and resumption: every arm is an override list that trains, a study
resumes from its results file alone (a fresh machine), adds only the runs it lacks, reruns an arm whose
definition changed, refuses another teacher; the paper's claims read from a partial file."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from eakd.study import Claim, claim_verdict, claims_table, reusable_runs
from eakd.vision import arms, demo

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fmnist_study", ROOT / "benchmarks" / "fmnist_study.py")
assert spec is not None and spec.loader is not None
fmnist_study = importlib.util.module_from_spec(spec)
sys.modules["fmnist_study"] = fmnist_study
spec.loader.exec_module(fmnist_study)

TINY = [
    "data.name=synthetic",
    "data.options={num_samples: 64, num_classes: 10, channels: 1, size: 28}",
    "data.train_subset=null",
    "train.epochs=1",
    "train.batch_size=32",
    "train.diag_every=0",
]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAKD_CACHE", str(tmp_path / "cache"))


def test_the_plan_has_every_arm_of_issue_18_with_its_seeds_and_reference():
    named = {"kd", "ea-kd", "dkd", "ea-dkd", "mlkd", "ea-mlkd", "no-kd", "er-kd", "inverse-kd", "base-kd"}
    named |= {"interact-kd", "ea-kd-norm", "ea-kd-hub100", "ls-kd", "ea-ls-kd", "ctkd", "ea-ctkd"}
    named |= {f"ea-kd-tau{t}" for t in (1, 2, 4, 5)} | {"kd-het", "ea-kd-het"}
    assert set(arms.STUDY_ARMS) == named
    seeds = arms.study_seeds()
    for arm in arms.STUDY_ARMS:
        assert seeds[arm] == list(range(20 if arm in arms.PRIMARY else 10))
        assert arm == "kd" or arm == "dkd" or arm == "kd-het" or arm in arms.REFERENCE
    for claim in arms.PAPER_CLAIMS:
        assert {claim.arm, claim.reference} <= set(arms.SETTINGS) and claim.sign in (1, -1)
    configs = {a: demo.load_config(demo.config_dir() / "kd.yaml", arms.SETTINGS[a]) for a in arms.SETTINGS}
    assert configs["base-kd"].distill.weighting == "base" and configs["ea-kd-tau5"].distill.tau == 5.0
    assert configs["ea-kd-hub100"].distill.h_ub == 100.0 and configs["ls-kd"].distill.standardize_logits
    assert configs["mlkd"].optim.lr < configs["kd"].optim.lr and configs["mlkd"].data.two_views
    assert configs["kd-het"].model.student == "mlp" and configs["kd-het"].model.teacher == "fmnist_cnn"


def test_the_first_studys_arms_keep_their_definitions():
    """Its runs are reused only where the override list is the one they ran with (MLKD's changed)."""
    first = json.loads((ROOT / "tests" / "data" / "fmnist_study_2026-12-03.json").read_text())  # first study
    same = [a for a in first["definitions"] if first["definitions"][a] == arms.SETTINGS.get(a)]
    assert set(same) == {"no-kd", "kd", "ea-kd", "er-kd", "inverse-kd", "dkd", "ea-dkd"}


def test_reusable_runs_keep_only_unchanged_arms_planned_seeds_and_protocol():
    run = {"last_top1": 1.0}
    before = {
        "protocol": {"p": 1},
        "definitions": {"a": ["x=1"], "b": ["y=1"]},
        "runs": {"a": {"0": run, "1": run, "7": run}, "b": {"0": run}},
    }
    plan = {"a": [0, 1, 2], "b": [0]}
    kept = reusable_runs(before, {"p": 1}, plan, {"a": ["x=1"], "b": ["y=2"]})
    assert kept == {"a": {"0": run, "1": run}}
    assert reusable_runs(before, {"p": 2}, plan, {"a": ["x=1"], "b": ["y=1"]}) == {}


def test_claim_verdicts_and_a_partial_file():
    up, down = Claim("x", "r", "a", "b", 1), Claim("x", "r", "a", "b", -1)
    assert claim_verdict(up, 1.0, 0.5, 10) == "agrees" and claim_verdict(down, 1.0, 0.5, 10) == "disagrees"
    assert claim_verdict(up, 0.3, 0.5, 10) == "no evidence" and claim_verdict(up, 2.0, math.nan, 1) == (
        "no evidence"
    )
    assert claim_verdict(up, math.nan, math.nan, 0) == "pending"
    result = {"runs": {"a": {"0": {"m": 2.0}, "1": {"m": 3.0}}, "b": {"0": {"m": 1.0}, "1": {"m": 1.5}}}}
    table = claims_table(result, [up, Claim("y", "r", "a", "c", 1)], "m", "m")
    rows = table.splitlines()[2:]  # diffs 1.0, 1.5: half-width 12.71 * 0.25
    assert rows[0].endswith("| +1.25 | [-1.93, +4.43] | 2 | no evidence |")
    assert rows[1].endswith("| - | - | 0 | pending |")


def test_a_tiny_study_resumes_from_its_results_file_only(tmp_path, capsys, monkeypatch):
    results, out = tmp_path / "results" / "study.json", tmp_path / "runs"
    argv = ["--arms", "kd", "ea-kd", "no-kd", "--primary-seeds", "2", "--other-seeds", "1", "--jobs", "1"]
    argv += ["--out", str(out), "--results", str(results), "--", *TINY]
    assert fmnist_study.main(argv) == 0
    first = json.loads(results.read_text())
    assert first["arm_seeds"] == {"kd": [0, 1], "ea-kd": [0, 1], "no-kd": [0]}
    assert first["definitions"]["ea-kd"] == arms.SETTINGS["ea-kd"]
    assert "5 runs to do, 0 kept from earlier" in capsys.readouterr().out
    # a fresh machine: no runs folder, no cached teacher, an interrupted file (ea-kd seed 1 missing)
    del first["runs"]["ea-kd"]["1"]
    results.write_text(json.dumps(first))
    for path in sorted(tmp_path.rglob("*"), reverse=True):
        if "results" not in path.parts and path.is_file():
            path.unlink()
    assert fmnist_study.main(argv) == 0
    assert "1 runs to do, 4 kept from earlier" in capsys.readouterr().out
    second = json.loads(results.read_text())
    assert second["runs"]["kd"] == first["runs"]["kd"] and "1" in second["runs"]["ea-kd"]
    # an arm whose definition changed is rerun whole, never mixed
    monkeypatch.setitem(arms.SETTINGS, "kd", [*arms.SETTINGS["kd"], "distill.kd_weight=0.8"])
    assert fmnist_study.main(argv) == 0
    assert "2 runs to do, 3 kept from earlier" in capsys.readouterr().out
    third = json.loads(results.read_text())
    assert third["definitions"]["kd"][-1] == "distill.kd_weight=0.8"
    assert third["runs"]["ea-kd"] == second["runs"]["ea-kd"]
    # another teacher (its recorded top-1 differs) is refused
    third["teacher"]["last"]["metrics"]["top1"] += 1.0
    results.write_text(json.dumps(third))
    with pytest.raises(ValueError, match="cannot be reused with this teacher"):
        fmnist_study.main(argv)


@pytest.mark.slow
@pytest.mark.parametrize("arm", list(arms.SETTINGS))
def test_every_arm_trains(arm, tmp_path):
    result = demo.demo_study(tmp_path / "runs", [0], [arm], TINY)
    metrics = result["runs"][arm]["0"]
    assert 0 <= metrics["last_top1"] <= 100 and metrics["steps"] == 2
