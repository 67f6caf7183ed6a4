"""What `pip install eakd[...]` gets: each part's third-party imports (read from the source, lazy imports too)
are declared by the base dependencies plus that part's extra, and each extra lists nothing its part does not
import. Also: the demos take their configs from the package, and a demo without its data names what is
missing in one line."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import torchvision

from eakd.cli import main
from eakd.detection import demo as det_demo
from eakd.engine.catalog import config_root
from eakd.vision import demo as vision_demo

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "eakd"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DYNAMIC = ("import_module", "importorskip")  # importlib.import_module("x"), pytest.importorskip("x")

# distributions a part needs without importing them by name, each with the reason
NOT_IMPORTED = {
    "tensorboard": "torch.utils.tensorboard imports it (the engine's and the LLM callback's logs)",
    "gguf": "transformers reads the GGUF teacher with it (eakd.llm.models)",
    "pycocotools": "torchmetrics' MeanAveragePrecision(backend='pycocotools') runs it (eakd.detection.eval)",
    "pytest-timeout": "a pytest plugin (pyproject's timeout setting)",
    "ruff": "a tool run by `make lint`, not imported",
    "build": "a tool: `python -m build` (tests/test_wheel.py)",
    "setuptools": "the build backend, needed by `python -m build --no-isolation` (tests/test_wheel.py)",
    "twine": "a tool: `twine check` of the built files",
}
# modules a part imports that no extra declares, each with the reason
UNDECLARED = {
    "pydantic_core": "pydantic's own core, pinned by pydantic (a base dependency)",
    "scipy": "optional: eakd.stats falls back to its own t quantiles without it",
    "timm": "optional: `timm:` models need it, installed by the user (tests skip without it)",
}


def imported_modules(files: list[Path]) -> set[str]:
    """Top-level names of the absolute imports of ``files``, including those inside functions and the
    string literals given to importlib.import_module / pytest.importorskip."""
    names: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in DYNAMIC and isinstance(node.args[0].value, str):
                    names.add(node.args[0].value.split(".")[0])
    local = {f.stem for f in files}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local and n != "eakd"}


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``Foo_Bar>=1`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]).lower()


def declared(*extras: str) -> set[str]:
    """The normalised names of the base dependencies and of ``extras``."""
    reqs = [*PROJECT["dependencies"], *(r for e in extras for r in PROJECT["optional-dependencies"][e])]
    return {requirement_name(r) for r in reqs}


def distributions(modules: set[str]) -> dict[str, set[str]]:
    """Module -> the normalised names of the installed distributions that provide it."""
    found = packages_distributions()
    return {m: {requirement_name(d) for d in found.get(m, [])} for m in modules}


def source_files(part: str) -> list[Path]:
    """The files of a part: "llm", "detection" (their packages), "base" (the rest of src/eakd), "bench"
    (benchmarks/), "dev" (tests/)."""
    if part in ("llm", "detection"):
        return sorted((SRC / part).rglob("*.py"))
    if part == "base":
        fronts = (SRC / "llm", SRC / "detection")
        return sorted(p for p in SRC.rglob("*.py") if not any(p.is_relative_to(f) for f in fronts))
    return sorted((ROOT / {"bench": "benchmarks", "dev": "tests"}[part]).rglob("*.py"))


# part -> the extras whose packages it may import (its own extra first)
PARTS = {
    "base": (),
    "llm": ("llm",),
    "detection": ("detection",),
    "bench": ("bench", "llm", "detection"),
    "dev": ("dev", "llm", "detection", "bench"),
}


def test_the_walk_sees_lazy_and_dynamic_imports(tmp_path):
    code = "import os\ndef f():\n    import torch.nn\n    from yaml import load\n    import_module('timm')\n"
    (tmp_path / "m.py").write_text(code)
    assert imported_modules([tmp_path / "m.py"]) == {"torch", "yaml", "timm"}
    assert requirement_name("Rouge_Score>=0.1.2") == "rouge-score"


@pytest.mark.parametrize("part", list(PARTS))
def test_every_import_is_declared(part):
    allowed = declared(*PARTS[part])
    missing = {
        module: dists or {"(not installed)"}
        for module, dists in distributions(imported_modules(source_files(part))).items()
        if module not in UNDECLARED and not dists & allowed
    }
    assert not missing, f"{part} imports modules its extras do not declare: {missing}"


@pytest.mark.parametrize("extra", ["llm", "detection", "bench", "dev", "base"])
def test_every_declared_package_is_imported(extra):
    """The base and each extra list only what their part imports (or a reason in NOT_IMPORTED)."""
    names = declared() if extra == "base" else declared(extra) - declared()
    imported = {d for ds in distributions(imported_modules(source_files(extra))).values() for d in ds}
    unused = names - imported - set(NOT_IMPORTED)
    assert not unused, f"[{extra}] lists packages its part never imports: {sorted(unused)}"


def test_configs_are_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    suffixes = {p.suffix for p in config_root().rglob("*") if p.is_file()}
    assert suffixes == {".yaml", ".json"}
    assert {f"configs/**/*{s}" for s in suffixes} <= set(package_data["eakd"])
    assert not (ROOT / "configs").exists(), "configs live in src/eakd/configs now"


def test_demos_read_the_packaged_configs():
    assert vision_demo.config_dir() == config_root() / "demo"
    assert det_demo.config_dir() == config_root() / "det"
    assert (vision_demo.config_dir() / "kd.yaml").is_file()
    assert (det_demo.config_dir() / det_demo.demo_data("trees").teacher).is_file()


def test_demo_without_data_or_internet_names_what_is_missing(tmp_path, monkeypatch, capsys):
    """No local Fashion-MNIST (an empty eakd cache) and a failing torchvision download: one line, exit 2,
    naming the folder, after trying the download."""
    tried = []

    def offline(self):
        tried.append(self.raw_folder)
        print("Failed to download (trying next):\n<urlopen error no internet>")  # as torchvision does
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setenv("EAKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--seeds", "0"]) == 2
    out, err = capsys.readouterr()
    folder = tmp_path / "cache" / "data" / "FashionMNIST" / "raw"
    assert tried == [str(folder)]
    assert "Failed to download" not in out + err
    assert len(err.strip().splitlines()) == 1
    assert f"Fashion-MNIST not found in {folder}" in err and "internet" in err
    assert not (tmp_path / "runs").exists()  # nothing started
