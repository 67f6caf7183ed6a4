"""The package's shape, checked on its source: dependencies point one way and modules stay small.

Every ``import`` in src/eakd counts, also those inside functions and under TYPE_CHECKING: a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "eakd"
FRONT_ENDS = {"eakd.vision", "eakd.detection", "eakd.llm"}
CORE = {"eakd.weighting", "eakd.losses", "eakd.distill", "eakd.registry", "eakd.checks", "eakd.paths"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The node a module belongs to: its subpackage (eakd.engine, eakd.losses, ...) or itself."""
    parts = module.split(".")
    if len(parts) > 2 or (SRC / parts[-1]).is_dir():
        return ".".join(parts[:2])
    return module


def imports_of(path: Path) -> set[str]:
    """The eakd modules ``path`` imports (absolute ``eakd.*`` names and relative imports resolved)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "eakd"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            if base.split(".")[0] == "eakd":
                found.add(base)
    return found


def graph() -> dict[str, set[str]]:
    """unit -> units it imports (self-edges dropped); the root package ``eakd`` is its own unit."""
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        src = unit(module_name(path))
        targets = {unit(m) for m in imports_of(path)} - {src}
        edges.setdefault(src, set()).update(targets)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_engine_imports_no_front_end():
    bad = sorted(
        f"{module_name(p)} imports {m}"
        for p in (SRC / "engine").rglob("*.py")
        for m in imports_of(p)
        if unit(m) in FRONT_ENDS
    )
    assert not bad, bad


def test_core_imports_neither_engine_nor_front_ends():
    edges = graph()
    bad = sorted(f"{c} -> {t}" for c in CORE for t in edges.get(c, ()) if t not in CORE)
    assert not bad, bad


def test_no_cycles_between_packages():
    edges = graph()
    edges.pop("eakd", None)  # the root re-exports the core; `import eakd` is the public API, not a cycle
    edges = {k: v - {"eakd"} for k, v in edges.items()}
    assert cycles(edges) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 420, f"{path} is over ~400 lines: split it along its seams"
