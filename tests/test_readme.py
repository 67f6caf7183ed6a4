"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# the plugin example registers names process-wide: test_readme_plugins runs it as a user would, apart
BLOCKS = [
    b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if not b.startswith("# my_plugin")
]


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
