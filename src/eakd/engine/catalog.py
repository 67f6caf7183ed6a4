"""The configs shipped inside the package (``eakd/configs``), by name: a config's name is its path below that
folder without ``.yaml`` (``cifar100/dkd/res32x4_res8x4``; other files keep their suffix,
``llm/deepspeed/zero2.json``). ``eakd train NAME`` and every command taking a config accept a name or a
path; a path that exists wins. ``eakd configs`` lists, shows and copies them.
"""

from __future__ import annotations

import difflib
import fnmatch
from importlib import resources
from pathlib import Path

import yaml

from eakd.engine.config import ConfigError, read_yaml

SUFFIX = ".yaml"


def config_root() -> Path:
    """The folder of the packaged configs (a plain folder: eakd is installed unzipped)."""
    root = resources.files("eakd") / "configs"
    if not isinstance(root, Path):
        raise TypeError(f"eakd's configs are not files on disk ({type(root).__name__}): a zipped install?")
    return root


def _name(path: Path) -> str:
    rel = path.relative_to(config_root()).as_posix()
    return rel.removesuffix(SUFFIX)


def list_configs(pattern: str | None = None) -> list[str]:
    """Sorted names of the packaged configs; ``pattern``: a glob (``*``, ``?``, ``[``) matched against the
    whole name, else a substring of it (None: all)."""
    names = sorted(_name(p) for p in config_root().rglob("*") if p.is_file())
    if not pattern:
        return names
    if any(c in pattern for c in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return [n for n in names if pattern in n]


def find_config(name_or_path: str | Path) -> Path:
    """The file of a config: ``name_or_path`` itself when it exists (a path wins), else the packaged config
    of that name (with or without ``.yaml``; a leading ``configs/``, the clone's old layout, is dropped).

    Raises ConfigError (a ValueError) naming the closest packaged names when neither exists.
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    if path.is_absolute():
        raise ConfigError(f"config file {path} does not exist")
    name = path.as_posix().removeprefix("configs/").removesuffix(SUFFIX)
    root = config_root()
    for candidate in (root / f"{name}{SUFFIX}", root / name):
        if candidate.is_file():
            return candidate
    close = difflib.get_close_matches(name, list_configs(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ConfigError(
        f"config file {path} does not exist, nor a packaged config {name!r}{hint} (`eakd configs` lists them)"
    )


def resolved_text(name_or_path: str | Path) -> str:
    """The text of one config as it stands alone: a YAML config with its ``base:`` chain merged in (a header
    comment naming its source), any other file (JSON) as it is."""
    path = find_config(name_or_path)
    if path.suffix != SUFFIX:
        return path.read_text()
    data = read_yaml(path)
    shown = _name(path) if path.resolve().is_relative_to(config_root().resolve()) else str(path)
    header = f"# {shown}, with its base files merged in (`eakd configs show {shown}`)\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def copy_config(name_or_path: str | Path, dest: str | Path) -> Path:
    """Write ``resolved_text(name_or_path)`` to ``dest`` (into it, under the config's file name, when it is
    a folder); refuses to overwrite (FileExistsError). Returns the file written."""
    source = find_config(name_or_path)
    out = Path(dest)
    if out.is_dir():
        out = out / source.name
    text = resolved_text(source)
    try:
        with open(out, "x") as f:
            f.write(text)
    except FileExistsError:
        raise FileExistsError(f"{out} exists; not overwritten (give a new file name)") from None
    return out
