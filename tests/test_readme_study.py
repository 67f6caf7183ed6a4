"""The README's `eakd study` example runs as written: its config and command give a study of the arms,
seeds, arm definitions and protocol of results/study_readme.json, whose tables the README shows
(scripts/tables.py; tests/test_tables.py checks the numbers against that file)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from eakd.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def example() -> tuple[str, list[str]]:
    """(the YAML of the README's ``# my_task.yaml`` block, its ``eakd study`` command's arguments)."""
    config = re.search(r"```yaml\n(# my_task\.yaml\n.*?)```", README, re.S)
    command = re.search(r"```bash\neakd (study my_task\.yaml[^\n]*)\n```", README)
    assert config is not None and command is not None
    return config[1], shlex.split(command[1])


def arm_rows(text: str) -> list[str]:
    """The first two cells (arm, seeds) of each row of a study's per-arm table."""
    return re.findall(r"^\| ([\w.+-]+ \| \d+) \| [\d.]+ ±", text, re.M)


@pytest.mark.slow
def test_the_readme_study_runs_as_shown(tmp_path, monkeypatch):
    config, argv = example()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EAKD_CACHE", str(tmp_path / "cache"))
    (tmp_path / "my_task.yaml").write_text(config)
    assert main(argv) == 0
    ran = json.loads((tmp_path / "runs" / "study-my_task" / "study.json").read_text())
    saved = json.loads((ROOT / "results" / "study_readme.json").read_text())
    for key in ("arms", "seeds", "definitions", "protocol", "report"):
        assert ran[key] == saved[key], key
    shown = README.split("<!-- results:study_readme -->")[1].split("<!-- /results:study_readme -->")[0]
    report = (tmp_path / "runs" / "study-my_task" / "report.md").read_text()
    assert arm_rows(shown) == arm_rows(report) == ["kd | 4", "ea-kd | 4", "er-kd | 4"]
    assert "| ea-kd - kd | 4 |" in shown and "seeds to find ±1" in shown
