"""LLM run configs and the `eakd llm` command line (no model is loaded here)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from eakd.cli import main as eakd_main
from eakd.llm.cli import main
from eakd.llm.run import load_run_config, training_args
from eakd.llm.study import METHODS, table

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "llm"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name: str, tmp_path: Path) -> None:
    cfg = load_run_config(CONFIGS / name, [f"train.output_dir={tmp_path}", "train.max_steps=3"])
    args = training_args(cfg)
    assert args.max_steps == 3 and cfg.model.teacher == "smollm2"
    args.loss_settings()  # validates divergence / weighting names


def test_overrides_and_unknown_keys(tmp_path: Path) -> None:
    cfg = load_run_config(
        CONFIGS / "ea_kd.yaml", ["train.tau=3.0", "model.student_layers=4", "data.eval_size=7"]
    )
    assert cfg.train["tau"] == 3.0 and cfg.model.student_layers == 4 and cfg.data.eval_size == 7
    assert cfg.train["weighting"] == "ea" and cfg.train["divergence"] == "fkl"  # from the file, base merged
    with pytest.raises(ValueError, match="unknown key"):
        load_run_config(None, ["model.layers=3"])
    with pytest.raises(ValueError, match="unknown section"):
        load_run_config(None, ["optim.lr=3"])
    with pytest.raises(ValueError, match="unknown token divergence"):
        training_args(load_run_config(None, ["train.divergence=kl", f"train.output_dir={tmp_path}"]))


def test_study_methods_and_table() -> None:
    assert list(METHODS) == ["sft", "kd", "rkl", "ea-kd"]
    rows = [
        {"method": "kd", "seed": 0, "rougeL": 10.0, "perplexity": 5.0, "train_seconds": 3.0},
        {"method": "kd", "seed": 1, "rougeL": 12.0, "perplexity": 7.0, "train_seconds": 5.0},
    ]
    assert "| kd | 2 | 11.00 | 10.00..12.00 | 6.00 | 4 |" in table(rows)
    rows += [
        {"method": "ea-kd", "seed": 0, "rougeL": 11.0, "perplexity": 5.0},
        {"method": "ea-kd", "seed": 1, "rougeL": 14.0, "perplexity": 5.0},
    ]
    # paired differences 1 and 2: mean 1.5, half-width t(0.975, 1) * 0.7071 / sqrt(2) = 12.706 * 0.5
    assert "ea-kd - kd: ROUGE-L +1.50 [-4.85, +7.85] (95 % CI, 2 paired seeds)" in table(rows)


def test_command_line_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert eakd_main(["llm", "--help"]) == 0
    assert "train CONFIG" in capsys.readouterr().out
    assert main(["nonsense"]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--help"])


def test_distributed_configs() -> None:
    import json

    fsdp = training_args(load_run_config(CONFIGS / "fsdp2.yaml", ["train.max_steps=1"]))
    assert fsdp.fsdp_config["version"] == 2 and fsdp.fused_loss and fsdp.weighting == "ea"
    zero2 = json.loads((CONFIGS / "deepspeed" / "zero2.json").read_text())
    assert zero2["zero_optimization"]["stage"] == 2
