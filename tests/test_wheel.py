"""`pip install eakd` works outside the source tree: the wheel, built offline from a copy of the sources and
installed with --no-deps into a fresh virtual environment (which reuses this environment's installed
dependencies through a .pth file), runs its commands and the README's example from an empty folder."""

from __future__ import annotations

import json
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = "Scripts" if sys.platform == "win32" else "bin"

pytestmark = pytest.mark.slow


def run(argv: list[str | Path], cwd: Path) -> str:
    """Run ``argv`` in ``cwd``; its stdout (stderr shown on failure)."""
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the sources (pyproject, README, src/: nothing else of the checkout goes in),
    built without network access or build isolation."""
    src = tmp / "source"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp / "dist", src], tmp)
    (wheel,) = (tmp / "dist").glob("eakd-*.whl")
    return wheel


def fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new virtual environment holding the wheel's eakd (no dependencies installed) and a .pth file that
    appends this environment's site-packages (.pth files there are not processed: no editable eakd)."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    python = venv / BIN / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp).strip())
    (purelib / "test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel]
    run(pip, tmp)
    return venv


def image_folder(root: Path, classes: int = 2, per_class: int = 2, size: int = 64) -> None:
    """train/ and val/ of ``classes`` folders of ``per_class`` solid-colour PNGs (the Tiny-ImageNet layout
    torchvision's ImageFolder reads)."""
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                colour = (80 * c + 20 * i, 40, 200 - 60 * c)
                Image.new("RGB", (size, size), colour).save(folder / f"{i}.png")


def readme_example() -> str:
    """The README's first Python block: the three-line EA example."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]


def test_installed_wheel_runs_outside_the_source_tree(tmp_path):
    venv = fresh_venv(tmp_path, build_wheel(tmp_path))
    python, eakd = venv / BIN / "python", venv / BIN / "eakd"
    work = tmp_path / "work"  # no configs/, no src/ here
    work.mkdir()

    where = run([python, "-c", "import eakd; print(eakd.__file__)"], work).strip()
    assert Path(where).is_relative_to(venv), f"eakd imported from {where}, not from the wheel"
    version = run([python, "-c", "from importlib.metadata import version; print(version('eakd'))"], work)
    assert run([eakd, "--version"], work).strip() == f"eakd {version.strip()}"

    names = run([eakd, "configs"], work).split()
    assert {"demo/kd", "cifar100/dkd/res32x4_res8x4", "llm/base", "det/trees_student"} <= set(names)
    assert "base:" not in run([eakd, "configs", "show", "cifar100/dkd/res32x4_res8x4"], work)

    image_folder(work / "images")
    overrides = [
        "data.root=images",
        "model.teacher=null",
        "train.epochs=1",
        "train.batch_size=4",
        "train.eval_batch_size=4",
        "train.num_workers=0",
        "train.cpu=true",
        "train.log_every=1",
        "train.diag_every=0",
        "experiment.output_dir=runs",
    ]
    run([eakd, "train", "tinyimagenet/vanilla_res8x4", *overrides], work)
    summary = json.loads((work / "runs" / "vanilla_res8x4" / "summary.json").read_text())
    assert summary["steps"] == 1  # 4 training images, batch 4, one epoch

    run([python, "-c", readme_example()], work)
    assert sorted(p.name for p in work.iterdir()) == ["images", "runs"]  # nothing written elsewhere here
