"""The result tables of the README and docs, generated from the files under results/.

    python scripts/tables.py            # rewrite every table between its markers
    python scripts/tables.py --check    # exit 1 when a table differs from its results file

A table is the text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in README.md or a file
of docs/; NAME is a results file (results/NAME.json) and ``RENDER[NAME]`` turns it into markdown. No number
in those places is typed by hand: tests/test_tables.py fails when one differs from its file.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eakd.detection.demo import format_table as detection_table
from eakd.llm.lm_study import pilot_table as llm_lm_pilot_table
from eakd.llm.lm_study import table as llm_lm_table
from eakd.llm.study import demo_time as llm_demo_time
from eakd.study import code_label
from eakd.vision.demo import format_table as vision_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks' render modules (not a package)
from _render_loss_overhead import render as loss_overhead_table  # noqa: E402
from _render_perf import engine_overhead_table, step_attribution_table  # noqa: E402

RESULTS = ROOT / "results"
MARKER = re.compile(r"(<!-- results:([\w.-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def provenance_line(result: dict[str, Any]) -> str:
    """Where the numbers come from: code version, date, machine."""
    p = result.get("provenance", {})
    m = p.get("machine", {})
    seeds = f"{len(result['seeds'])} seeds, " if "seeds" in result else ""
    return (
        f"_Measured {p.get('date', '?')} on {m.get('cpus', '?')} CPU cores ({m.get('device', '?')}), torch "
        f"{m.get('torch', '?')}, code {code_label(p)}; {seeds}{result.get('wall_s', 0) / 60:.0f} min._"
    )


def study(render: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
    """A study's table as its demo prints it, followed by its provenance."""
    return lambda result: f"{render(result)}\n\n{provenance_line(result)}"


RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "demo": study(vision_table),
    "fmnist_study": study(vision_table),
    "det_study": study(detection_table),
    "det_scenes": study(detection_table),
    "loss_overhead": loss_overhead_table,
    "step_attribution": step_attribution_table,
    "engine_overhead": engine_overhead_table,
    "demo_llm": llm_demo_time,
    "llm_lm_pilot": study(llm_lm_pilot_table),
    "llm_lm_study": study(llm_lm_table),
}


def render(name: str) -> str:
    """The markdown of results/NAME.json; a line saying so when the study has not run yet."""
    if name not in RENDER:
        raise ValueError(f"no renderer for results {name!r}: add one to RENDER in scripts/tables.py")
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return f"_Not measured yet: results/{name}.json does not exist._"
    return RENDER[name](json.loads(path.read_text()))


def regenerate(text: str) -> str:
    """``text`` with every marked table replaced by its freshly rendered content."""
    return MARKER.sub(lambda m: f"{m.group(1)}{render(m.group(2))}\n{m.group(4)}", text)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main() -> int:
    stale = []
    for path in documents():
        text = path.read_text()
        new = regenerate(text)
        if new != text:
            stale.append(path)
            if "--check" not in sys.argv[1:]:
                path.write_text(new)
                print(f"wrote {path.relative_to(ROOT)}")
    if "--check" in sys.argv[1:] and stale:
        print("out of date: " + ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
