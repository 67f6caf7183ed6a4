"""Each LLM loss setting is declared once (``TokenLossSettings``, with its help) and every entry point
takes it from there: the Trainer's config, a run config's train section, the study arms, the CLI; shared
settings have the image side's defaults (``eakd.DistillLoss``)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

import eakd
from eakd.llm.settings import GenerationSettings, TokenLossSettings

pytest.importorskip("transformers")
from eakd.llm.cli import evaluate_cmd
from eakd.llm.run import ARM_KEYS, DataSection, EvalSection, LLMRunConfig, training_args
from eakd.llm.study import METHODS
from eakd.llm.trainer import EAKDConfig

SRC = Path(eakd.__file__).parent
DECLARED = {cls: [f.name for f in dataclasses.fields(cls)] for cls in (TokenLossSettings, GenerationSettings)}
SETTINGS = [name for names in DECLARED.values() for name in names]


def test_every_setting_has_help_text() -> None:
    for cls in DECLARED:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{f.name} has no help text"
    for f in dataclasses.fields(EAKDConfig):
        if f.name in ("chunked", "chunk_size", "vocab_size", "diag_samples"):
            assert f.metadata.get("help"), f"{f.name} has no help text"


def test_no_loss_setting_is_declared_twice() -> None:
    """No settings or config class of eakd.llm re-declares a TokenLossSettings or GenerationSettings field
    (EvalSection's max_new_tokens is the evaluation's): they reach EAKDConfig
    by inheritance, and the run config, the study and the CLI read them from there. (The teacher cache's
    ``temperature`` and ``tau`` are data it holds, and EvalSection's ``temperature`` the sampling one.)"""
    declared: dict[str, list[str]] = {}
    for path in sorted((SRC / "llm").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Config", "Settings")):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        declared.setdefault(stmt.target.id, []).append(f"{path.name}:{node.name}")
    twice = {k: v for k, v in declared.items() if k in SETTINGS and len(v) > 1}
    assert not twice, f"declared more than once: {twice}"
    for cls, names in DECLARED.items():
        assert all(declared[name] == [f"settings.py:{cls.__name__}"] for name in names)


def test_defaults_agree_between_entry_points(tmp_path: Path) -> None:
    """The loss settings of TokenLossSettings(), EAKDConfig(), a run config with an empty train section
    (eakd llm train / demo / study) are the same; the shared ones are DistillLoss's defaults."""
    plain = TokenLossSettings()
    assert EAKDConfig(output_dir=str(tmp_path)).loss_settings() == plain
    assert training_args(LLMRunConfig()).loss_settings() == plain
    distill = inspect.signature(eakd.DistillLoss).parameters
    for name in ("weighting", "tau", "h_ub", "kd_weight", "ce_weight", "weight_norm"):
        assert distill[name].default == getattr(plain, name), name
    assert plain.policy() is not None and plain.policy().tau == eakd.weighting.RULES["ea"].tau


def defaults(cls: type) -> dict[str, object]:
    """The plain defaults of a dataclass's fields (no factories)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def test_shared_defaults_are_one_rule() -> None:
    """Every setting that the engine's DistillConfig, DistillLoss and the LLM's TokenLossSettings share has
    one default (DistillLoss's): a default changed in one entry point only fails here."""
    from eakd.engine.config import DistillConfig

    sources = {
        "DistillConfig": defaults(DistillConfig),
        "DistillLoss": {
            n: p.default
            for n, p in inspect.signature(eakd.DistillLoss).parameters.items()
            if p.default is not p.empty
        },
        "TokenLossSettings": defaults(TokenLossSettings),
    }
    shared = 0
    for a, b in [("DistillConfig", "DistillLoss"), ("DistillConfig", "TokenLossSettings"),
                 ("DistillLoss", "TokenLossSettings")]:  # fmt: skip
        for name in sources[a].keys() & sources[b].keys():
            assert sources[a][name] == sources[b][name], (
                f"{name}: {a} {sources[a][name]!r}, {b} {sources[b][name]!r}"
            )
            shared += 1
    assert shared >= 15  # method, weighting, tau, h_ub, kd_weight, ce_weight, weight_norm, fused, ...


def test_er_keeps_its_own_tau() -> None:
    """tau None is the policy's own default: ER's 4, not EA's or the LLM study's 2."""
    assert TokenLossSettings(weighting="er").policy().tau == 4.0
    assert TokenLossSettings(weighting="er", tau=2.0).policy().tau == 2.0


def test_study_arms_and_warm_start_keys_come_from_the_declaration() -> None:
    assert set(ARM_KEYS) <= set(SETTINGS)
    for arm in METHODS.values():
        assert set(arm) <= set(SETTINGS)
        TokenLossSettings(**{k: v for k, v in arm.items() if k in DECLARED[TokenLossSettings]})
        GenerationSettings(**{k: v for k, v in arm.items() if k in DECLARED[GenerationSettings]})


def test_cli_eval_defaults_are_the_run_config_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    """``eakd llm eval`` evaluates like a run: its option defaults are DataSection's and EvalSection's."""
    seen = {}

    def stop(model, tokenizer, test, **kw):
        seen.update(kw, n=len(test))
        raise SystemExit(0)

    import eakd.llm.data as data
    import eakd.llm.evaluate as evaluate
    import eakd.llm.models as models

    monkeypatch.setattr(models, "load_teacher", lambda name: (None, None))
    monkeypatch.setattr(
        data, "load_pairs", lambda *a, **k: [{"prompt": str(i), "response": f"r{i}"} for i in range(300)]
    )
    monkeypatch.setattr(evaluate, "evaluate", stop)
    with pytest.raises(SystemExit):
        evaluate_cmd(["m"])
    d, e = DataSection(), EvalSection()
    assert seen == {
        "max_new_tokens": e.max_new_tokens, "max_length": d.max_length, "sampling_seeds": e.sampling_seeds,
        "n": d.test_size,
    }  # fmt: skip


def test_renamed_train_key_is_refused_with_its_new_name() -> None:
    from eakd.engine.config import ConfigError
    from eakd.llm.cli import read_run_config

    with pytest.raises(ConfigError, match=r"train\.fused_loss.*did you mean 'train\.chunked'"):
        read_run_config(None, ["train.fused_loss=false"])
