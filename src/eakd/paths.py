"""Where eakd looks for things: its cache of derived artefacts (unpacked data, converted checkpoints; never
inside the repository) and the installed packages that carry offline data or weights."""

import importlib.util
import os
from pathlib import Path


def cache_dir(*parts: str, create: bool = True) -> Path:
    """``$EAKD_CACHE/<parts...>`` (default ``~/.cache/eakd/<parts...>``), created unless ``create=False``."""
    root = Path(os.environ.get("EAKD_CACHE") or Path.home() / ".cache" / "eakd").expanduser()
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(module: str, source: str) -> Path:
    """The folder of the installed package ``module`` that carries offline data or weights, found without
    importing it; the library never installs it (``make fetch`` does: ``python scripts/fetch.py SOURCE``).

    source: the fetch script's name for it, for the error. Raises FileNotFoundError naming both.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"offline source {source!r} not found: no installed package {module!r}; run `make fetch` "
            f"(or `python scripts/fetch.py {source}`), or give the path of a local copy"
        )
    return Path(next(iter(spec.submodule_search_locations)))
