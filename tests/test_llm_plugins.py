"""The README's LLM divergence plugin, run as a user would: its files written out, then `eakd llm train`
(on the tiny teacher and pairs of tests/tiny_llm.py instead of SmolLM2 and chatterbot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme_plugins import readme_block

pytest.importorskip("transformers")
from tiny_llm import PAIRS, make_teacher, make_tokenizer


@pytest.mark.slow
def test_readme_divergence_plugin_trains_through_eakd_llm_train(tmp_path: Path) -> None:
    (tmp_path / "my_divergence.py").write_text(readme_block("# my_divergence.py"))
    (tmp_path / "hellinger.yaml").write_text(readme_block("# hellinger.yaml"))
    command = readme_block("eakd llm train").split("#")[0].split()
    assert command == ["eakd", "llm", "train", "hellinger.yaml"]
    tokenizer = make_tokenizer()
    make_teacher(tokenizer).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in PAIRS))
    tiny = [  # the tiny teacher and data, and a budget of two steps
        "model.teacher=teacher", "model.student_layers=2", "model.warm_start_steps=0",
        "data.source=pairs.jsonl", "data.prompt_column=prompt", "data.context_column=null",
        "data.val_size=1", "data.test_size=1", "data.max_length=32", "eval.max_new_tokens=4",
        "eval.sampling_seeds=1", "eval.every=1", "train.max_steps=2", "train.num_train_epochs=1",
        "train.per_device_train_batch_size=2", "train.use_cpu=true", "train.warmup_steps=0",
        "train.logging_steps=1",
    ]  # fmt: skip
    done = subprocess.run(  # the `eakd` script of this environment, from the user's folder
        [str(Path(sys.executable).with_name("eakd")), *command[1:], *tiny],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "llm" / "hellinger" / "results.json").read_text())
    assert result["config"]["train"]["divergence"] == "hellinger"
    metrics = (tmp_path / "runs" / "llm" / "hellinger" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 3 and "train_loss_kd" in metrics[0]  # two logged steps with the plugin's term
    kd = [float(r.split(",")[metrics[0].split(",").index("train_loss_kd")]) for r in metrics[1:]]
    assert all(0 < v < 1 for v in kd)  # squared Hellinger distances are in [0, 1]
