"""Where eakd keeps derived artefacts (unpacked data, converted checkpoints): never inside the repository."""

import os
from pathlib import Path


def cache_dir(*parts: str, create: bool = True) -> Path:
    """``$EAKD_CACHE/<parts...>`` (default ``~/.cache/eakd/<parts...>``), created unless ``create=False``."""
    root = Path(os.environ.get("EAKD_CACHE") or Path.home() / ".cache" / "eakd").expanduser()
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
