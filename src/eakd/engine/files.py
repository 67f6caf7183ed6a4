"""Atomic file writes: a reader (or a resumed run) never sees a half-written file of a run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open ``path.tmp`` for writing; on a clean exit flush, fsync and ``os.replace`` it over ``path``.

    On an error the temporary file is removed and ``path`` keeps its old content. A process killed
    inside the block leaves at most a stray ``.tmp`` file, which nothing reads. kwargs go to ``open``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``atomic_open``)."""
    with atomic_open(path) as f:
        f.write(text)
