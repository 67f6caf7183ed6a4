"""Bad inputs against every command (scripts/reliability.py): each ends in one clear line and exit 2, or is
refused with the finished run's files kept; docs/reliability.md's table is what these cases give."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reliability", ROOT / "scripts" / "reliability.py")
assert spec is not None and spec.loader is not None
reliability = importlib.util.module_from_spec(spec)
sys.modules["reliability"] = reliability  # dataclasses look their module up there
spec.loader.exec_module(reliability)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcomes() -> list:
    return reliability.run_all(progress=lambda _: None)


@pytest.mark.parametrize("index", range(len(reliability.CASES)), ids=lambda i: reliability.CASES[i].what)
def test_bad_input_gives_one_clear_line(outcomes, index):
    case, outcome = reliability.CASES[index], outcomes[index]
    assert outcome.kind in reliability.GOOD, f"{case.argv or case.code}: {outcome}"


def test_docs_table_is_what_the_cases_give(outcomes):
    doc = reliability.DOC.read_text()
    want = reliability.with_table(doc, reliability.table(reliability.CASES, outcomes))
    assert doc == want, "docs/reliability.md is out of date: run `python scripts/reliability.py`"
