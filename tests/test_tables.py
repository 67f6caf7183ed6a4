"""Every result table in the README and docs is what scripts/tables.py makes of its results/ file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tables", ROOT / "scripts" / "tables.py")
assert spec is not None and spec.loader is not None
tables = importlib.util.module_from_spec(spec)
sys.modules["tables"] = tables
spec.loader.exec_module(tables)


@pytest.mark.parametrize("path", tables.documents(), ids=lambda p: p.name)
def test_tables_match_their_results_files(path):
    text = path.read_text()
    assert tables.regenerate(text) == text, f"{path.name} is out of date: run `python scripts/tables.py`"


def test_a_marked_table_is_replaced_and_unknown_names_are_errors():
    text = "a\n<!-- results:fmnist_study -->\nhand-typed 99.9 %\n<!-- /results:fmnist_study -->\nb\n"
    new = tables.regenerate(text)
    assert "hand-typed" not in new and new.startswith("a\n<!-- results:fmnist_study -->\n")
    with pytest.raises(ValueError, match="no renderer"):
        tables.regenerate("<!-- results:nosuch -->\n<!-- /results:nosuch -->")


def test_provenance_marks_uncommitted_code_but_not_written_results(tmp_path):
    import subprocess

    from eakd.study import code_label, provenance

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "study.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = provenance(tmp_path)["code"]
    assert len(clean) == 40 and "+" not in clean
    (tmp_path / "results" / "study.json").write_text('{"runs": 1}\n')  # a study saving after a run
    assert provenance(tmp_path)["code"] == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    dirty = provenance(tmp_path)
    assert dirty["code"] == clean + "+dirty"
    assert code_label(dirty) == clean[:12] + "+dirty"
