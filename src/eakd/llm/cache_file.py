"""Where a teacher cache (``eakd.llm.cache``) is written: its file format's name, the path it may be written
to (``cache_path``) and what it would replace there (``replaceable_cache``: only an eakd teacher cache, of
any kind or format, never a user's file)."""

from __future__ import annotations

from pathlib import Path

CACHE_FORMAT = "eakd-teacher-cache-3"
FORMAT_PREFIX = "eakd-teacher-cache-"  # every format's name starts so (1 had no tail_logmass, 2 no kind)


def cache_path(path: str | Path) -> Path:
    """``path`` as the file to write a cache to; a directory there is a ValueError (a cache is one file)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"the teacher cache path {path} is a directory; give a file path, e.g. "
            f"{path / 'teacher_cache.safetensors'}"
        )
    return path


def replaceable_cache(path: str | Path) -> str | None:
    """What a cache written to ``path`` would replace: None (nothing there), or the format of the eakd teacher
    cache there (``CACHE_FORMAT`` or an older one). Anything else there (a file that is not an eakd teacher
    cache, however it is named) is a FileExistsError: a cache is never written over a user's file."""
    path = cache_path(path)
    if not path.exists():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            found = (f.metadata() or {}).get("format", "")
    except (SafetensorError, OSError, ValueError):
        found = ""
    if not found.startswith(FORMAT_PREFIX):
        raise FileExistsError(
            f"{path} exists and is not an eakd teacher cache; not overwritten (choose another file)"
        )
    return found
