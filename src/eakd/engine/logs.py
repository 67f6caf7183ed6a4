"""CSV logs that survive a resume: rows appended as they come, columns widened when new keys appear.

A rewrite (wider header, rows cut on resume) replaces the file atomically (``eakd.engine.files``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from eakd.engine.files import atomic_open


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """All rows of a CSV file as dicts (empty list if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(value: Any) -> Any:
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:.6g}"
    return value


class CsvLog:
    """Append-only CSV with a header; a row with new keys rewrites the file with the wider header.

    resume_key/resume_max: on opening, drop rows whose ``resume_key`` column exceeds ``resume_max``
    (rows written after the checkpoint a resumed run starts from).
    """

    def __init__(
        self, path: str | Path, resume_key: str | None = None, resume_max: float | None = None
    ) -> None:
        self.path = Path(path)
        rows = read_csv(self.path)
        if resume_key is not None and resume_max is not None:
            kept = [r for r in rows if float(r.get(resume_key) or 0) <= resume_max]
            if len(kept) != len(rows):
                self._write(kept, list(rows[0]) if rows else [])
            rows = kept
        self.columns: list[str] = list(rows[0]) if rows else []

    def _write(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        with atomic_open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, *rows: dict[str, Any]) -> None:
        """Write rows (floats to 6 significant digits)."""
        rows_f = [{k: _fmt(v) for k, v in row.items()} for row in rows]
        new = [k for row in rows_f for k in row if k not in self.columns]
        if new or not self.path.is_file():
            self.columns += list(dict.fromkeys(new))
            self._write([*read_csv(self.path), *rows_f], self.columns)
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerows(rows_f)
