"""The README's "Extending eakd" example, run as a user would: its files written out, then `eakd train`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(start: str) -> str:
    """The fenced code block of the README that starts with ``start``."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), flags=re.S):
        if block.startswith(start):
            return block
    raise AssertionError(f"no README code block starts with {start!r}")


def test_readme_plugin_example_trains_through_eakd_train(tmp_path):
    (tmp_path / "my_plugin.py").write_text(readme_block("# my_plugin.py"))
    (tmp_path / "stripes.yaml").write_text(readme_block("# stripes.yaml"))
    command = readme_block("eakd train").split("#")[0].split()
    assert command == ["eakd", "train", "stripes.yaml"]
    done = subprocess.run(  # the `eakd` script of this environment, from the user's folder
        [str(Path(sys.executable).with_name("eakd")), *command[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "stripes" / "summary.json").read_text())
    assert summary["task"] == "stripes" and summary["last"]["epoch"] == 3
    assert summary["best"]["value"] > 90  # stripes are easy: the student learns them
    config = (tmp_path / "runs" / "stripes" / "config.yaml").read_text()
    assert "method: l2_logits" in config and "weighting: teacher_margin" in config
    diagnostics = (tmp_path / "runs" / "stripes" / "diagnostics.csv").read_text().splitlines()
    assert len(diagnostics) > 1 and "w_mean" in diagnostics[0]
