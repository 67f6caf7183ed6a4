"""`eakd llm study`: `eakd study`'s machinery on LLM run configs. A tiny study end to end on the tiny
teacher (interrupted, resumed with its finished runs kept; its report's intervals are the paired
t-intervals of the per-run values), the default arms, and bad input refused in one line with nothing lost."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from eakd.cli import main
from eakd.config_study import arm_configs
from eakd.llm import config_study
from eakd.stats import paired_interval

ARMS = ["--arm", "kd=train.weighting=none", "--arm", "ea-kd=train.weighting=ea"]


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Path:
    from tiny_llm import write_run

    monkeypatch.chdir(tmp_path)
    write_run(tmp_path, max_steps=2, per_device_train_batch_size=1)  # the seed orders the 2 training rows
    return tmp_path


def test_a_tiny_llm_study_is_interrupted_resumed_and_reported(tiny, monkeypatch, capsys):
    real, calls = config_study.train_one, []

    def stopped_at_the_fourth(config, overrides, seed, folder, **kwargs):
        calls.append((folder.name, seed))
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C in the fourth run
        return real(config, overrides, seed, folder, **kwargs)

    monkeypatch.setattr(config_study, "train_one", stopped_at_the_fourth)
    argv = ["llm", "study", "run.yaml", "eval.every=0", *ARMS, "--seeds", "0-2", "--out", "study"]
    argv += ["--metric", "perplexity"]
    assert main(argv) == 130
    first = json.loads((tiny / "study" / "study.json").read_text())
    assert [c[0] for c in calls] == ["kd-seed0", "ea-kd-seed0", "kd-seed1", "ea-kd-seed1"]  # seed-major
    assert {a: list(r) for a, r in first["runs"].items()} == {"kd": ["0", "1"], "ea-kd": ["0"]}
    run = json.loads((tiny / "study" / "kd-seed1" / "results.json").read_text())
    assert run["config"]["train"]["seed"] == 1 and run["config"]["train"]["weighting"] == "none"
    assert main(argv) == 2  # the folder holds a study: only --resume continues it
    assert "holds a study already" in capsys.readouterr().err

    calls.clear()
    monkeypatch.setattr(config_study, "train_one", real)
    assert main([*argv, "--resume"]) == 0
    result = json.loads((tiny / "study" / "study.json").read_text())
    for arm, runs in first["runs"].items():
        for seed, metrics in runs.items():
            assert result["runs"][arm][seed] == metrics  # kept, not rerun
    assert "3 runs to do, 3 kept from earlier" in capsys.readouterr().out
    assert result["definitions"] == {"kd": ["train.weighting=none"], "ea-kd": ["train.weighting=ea"]}
    assert "output_dir" not in result["protocol"]["config"]["train"]
    metrics = result["runs"]["ea-kd"]["2"]
    assert metrics["val_kl_start"] > 0 and metrics["val_perplexity"] > 1
    assert metrics["best_step"] == 2  # eval.every 0: validated at the last step only

    report = (tiny / "study" / "report.md").read_text()
    assert (tiny / "study" / "differences.png").stat().st_size > 0
    kd = [result["runs"]["kd"][s]["last_perplexity"] for s in "012"]
    ea = [result["runs"]["ea-kd"][s]["last_perplexity"] for s in "012"]
    assert len(set(kd)) > 1  # the seeds differ: an interval to check
    mean, half = paired_interval(ea, kd)
    row = re.search(r"^\| ea-kd - kd \| 3 \| (.*) \|$", report, re.M)
    assert row is not None
    cells = row[1].split(" | ")
    assert cells[:2] == [f"{mean:+.2f}", f"[{mean - half:+.2f}, {mean + half:+.2f}]"]
    shown = "better" if mean + half < 0 else "worse" if mean - half > 0 else "no difference shown"
    assert cells[2] == shown and "(lower is better)" in report  # perplexity: lower is better
    assert f"| kd | 3 | {statistics.fmean(kd):.2f} ± {statistics.stdev(kd):.2f} |" in report


def test_default_arms_compare_the_divergence_unweighted_with_ea_and_er(tiny):
    cfg = config_study.read_run_config("run.yaml", [])
    arms = config_study.default_arms(cfg)
    assert arms == {
        "kd": ["train.weighting=none"],
        "ea-kd": ["train.weighting=ea"],
        "er-kd": ["train.weighting=er", "train.tau=null"],
    }
    configs = arm_configs("run.yaml", arms, [], config_study.LLM)
    assert [c.train["weighting"] for c in configs.values()] == ["none", "ea", "er"]
    rkl = config_study.default_arms(config_study.read_run_config("run.yaml", ["train.divergence=rkl"]))
    assert list(rkl) == ["rkl", "ea-rkl", "er-rkl"]
    with pytest.raises(ValueError, match="distils nothing"):
        config_study.default_arms(
            config_study.read_run_config("run.yaml", ["train.kd_weight=0", "train.ce_weight=1"])
        )


BAD = [
    (["--arm", "a=train.weightng=none", "--arm", "b"], "'train.weightng': unknown key (did you mean 'train."),
    (["--arm", "a=train.tau=2.0", "--arm", "b"], "give the same config"),
    (["--arm", "a", "--arm", "a=train.tau=3"], "given twice"),
    (["--arm", "a=train.seed=3", "--arm", "b=train.weighting=none"], "sets 'train.seed=3'"),
    (["--arm", "a=train.output_dir=x", "--arm", "b=train.weighting=none"], "the study sets train.output_dir"),
    (["--seeds", ","], "no seed given"),
    (["--seeds", "0,1,1"], "given twice"),
    (["train.max_steps=3", "--resume"], "holds another study (config differs in train.max_steps)"),
    (["--resume", "--arm", "kd=train.weighting=none", "--arm", "ea-kd=train.tau=3"], "mixed"),
    (["--out", "study/kd-seed0"], "holds files but no study"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_loses_nothing(tiny, monkeypatch, capsys, args, message):
    monkeypatch.setattr(config_study, "train_one", fake_train_one)
    assert main(["llm", "study", "run.yaml", *ARMS, "--seeds", "0-1", "--out", "study"]) == 0
    before = {p: p.read_bytes() for p in (tiny / "study").rglob("*") if p.is_file()}
    capsys.readouterr()
    argv = ["llm", "study", "run.yaml", *(ARMS if "--arm" not in args else []), "--seeds", "0-1"]
    assert main([*argv, "--out", "study", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("eakd llm study: ") and message in err[0], err
    assert {p: p.read_bytes() for p in (tiny / "study").rglob("*") if p.is_file()} == before


def fake_train_one(config, overrides, seed, folder, **kwargs) -> dict[str, float]:
    """A run's metrics without training (for the refusals)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text("{}")
    value = 10.0 + seed + len(folder.name) / 10
    return {"best_rougeL": value, "last_rougeL": value, "train_s": 1.0}


def test_prepare_writes_one_cache_per_tau_for_the_arms_reading_the_dataset(tiny):
    """A study's teacher caches: one file per entropy temperature among the arms, shared by the arms of
    that tau; an on-policy arm (its responses generated) reads none and runs the teacher online."""
    from eakd.llm.study import method_arms

    arms = method_arms(["kd", "ea-kd", "ea-kd-tau1", "gkd"])
    top8 = ["cache.top_k=8"]  # of the tiny vocabulary
    extra, seconds = config_study.prepare("run.yaml", arms, top8, tiny / "s", teacher_cache=True)
    tau2, tau1 = tiny / "s" / "teacher_cache_tau2.safetensors", tiny / "s" / "teacher_cache_tau1.safetensors"
    assert extra == {
        "kd": [f"model.teacher_cache={tau2}"],
        "ea-kd": [f"model.teacher_cache={tau2}"],
        "ea-kd-tau1": [f"model.teacher_cache={tau1}"],
    }
    assert tau1.is_file() and tau2.is_file() and set(seconds) == {"teacher_cache", "warm_start"}
    assert config_study.prepare("run.yaml", arms, top8, tiny / "s", teacher_cache=False)[0] == {}


def test_the_demo_on_a_tiny_teacher_saves_its_before_after_table(tiny, capsys):
    """`eakd llm demo --config`: both arms through the study function, from the teacher cache; the saved
    result holds the students' fit before and after and the example responses, and renders as the
    README's table with the one-seed caveat."""
    from eakd.llm.demo import demo_table

    argv = ["llm", "demo", "--config", "run.yaml", "--steps", "2", "--top-k", "8", "--out", "demo"]
    argv += ["--results", "demo.json"]
    assert main(argv) == 0
    result = json.loads((tiny / "demo.json").read_text())
    assert result["arms"] == ["kd", "ea-kd"] and result["seeds"] == [0]
    assert result["definitions"]["ea-kd"] == ["train.divergence=fkl", "train.weighting=ea", "train.tau=2.0"]
    assert (tiny / "demo" / "teacher_cache_tau2.safetensors").is_file()
    run = json.loads((tiny / "demo" / "kd-seed0" / "results.json").read_text())
    assert run["config"]["model"]["teacher_cache"].endswith("teacher_cache_tau2.safetensors")
    assert run["config"]["train"]["max_steps"] == 2 and run["config"]["model"]["warm_start"] is None
    ex = result["demo"]["examples"]
    assert list(ex["responses"]) == ["teacher", "untrained student", "kd", "ea-kd"]
    assert len(ex["prompts"]) == 1 and all(len(r) == 1 for r in ex["responses"].values())  # 1 test pair
    text = demo_table(result)
    assert text in capsys.readouterr().out
    kd = result["runs"]["kd"]["0"]
    assert f"| kd, after 2 steps | {kd['val_kl']:.2f} | {kd['val_top1']:.3f} |" in text
    assert f"| student before distillation (2 teacher layers) | {kd['val_kl_start']:.2f} |" in text
    assert "What one seed cannot show" in text and "ea-kd - kd" in text


def test_the_instruction_study_lengthens_its_warm_start_until_the_kl_at_start_is_within_2_nats(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "llm_study.py"
    spec = importlib.util.spec_from_file_location("llm_study_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    kl = {180: 2.6, 360: 1.9, 540: 1.5, 720: 1.2}
    measured = []
    chosen = bench.warm_start(lambda steps: measured.append(steps) or kl[steps])
    assert chosen == {"steps": 360, "kl": 1.9, "tried": {180: 2.6, 360: 1.9}} and measured == [180, 360]
    assert "warm start of 180 steps: validation KL at start 2.60 nats" in capsys.readouterr().out
    assert bench.warm_start(lambda steps: 2.0)["steps"] == 180  # at most 2 nats passes
    with pytest.raises(SystemExit, match="no warm start of up to 720 steps"):
        bench.warm_start(lambda steps: 3.0)
    assert bench.warm_start_overrides(540)[1] == "model.warm_start_steps=540"
