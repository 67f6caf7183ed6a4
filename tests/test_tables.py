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
