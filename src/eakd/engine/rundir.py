"""The run folder: a second run never clobbers a first, and a resume continues the run it claims to.

``check_run_dir`` is called by every process before anything is written. A folder holding a run (any of
``RUN_FILES``) is refused unless the new run resumes it (``train.resume``) or replaces it
(``train.overwrite=true``, after which ``clear_run_dir`` deletes those files). A resume compares the
requested config with the one stored in the checkpoint (or, before the first checkpoint, the folder's
config.yaml) and refuses any difference outside ``RESUMABLE_KEYS``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from eakd.engine.checkpoint import list_checkpoints, load_training_checkpoint
from eakd.engine.config import Config, ConfigError, load_config, to_dict

RUN_FILES = (
    "config.yaml",
    "metrics.csv",
    "diagnostics.csv",
    "class_weights.csv",
    "summary.json",
    "best.pt",
    "checkpoints",
    "diagnostics",
    "tb",
)
"""What a run writes into its folder (other files there, e.g. ``eakd report``'s, are left alone)."""

RESUMABLE_KEYS = frozenset(
    {
        "experiment.output_dir",  # the same folder may be named another way (relative, absolute)
        "experiment.name",
        "data.root",
        "data.download",
        "model.teacher_source",
        "train.epochs",
        "train.resume",
        "train.overwrite",
        "train.log_every",
        "train.diag_every",
        "train.diag_samples",
        "train.eval_every",
        "train.eval_batch_size",
        "train.ckpt_every",
        "train.ckpt_every_steps",
        "train.keep_checkpoints",
        "train.num_workers",
    }
)
"""Dotted config keys a resumed run may change: where things are (and where to get them), the epoch budget,
logging, evaluation and checkpoint periods, data workers. Any other difference is a different run and is
refused."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """The dotted keys, outside ``RESUMABLE_KEYS``, whose values differ between two config mappings."""
    a, b = flatten(stored), flatten(requested)
    return sorted(k for k in a.keys() | b.keys() if k not in RESUMABLE_KEYS and a.get(k) != b.get(k))


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds any file a run writes."""
    return any((run_dir / name).exists() for name in RUN_FILES)


def _stored_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    try:
        return to_dict(load_config(path))
    except ConfigError as err:
        raise ValueError(f"{path} (the stored run's config) cannot be read: {err}") from err


def newest_readable_checkpoint(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """(the newest training checkpoint of ``run_dir`` that reads back, its contents, a line for each newer one
    skipped because it cannot be read: truncated or corrupt). (None, None, []) without checkpoints; when
    none reads back, the newest one's ValueError."""
    found = list_checkpoints(run_dir)[::-1]
    skipped: list[str] = []
    for path in found:
        try:
            return path, load_training_checkpoint(path), skipped
        except ValueError as err:
            if path == found[-1]:
                raise ValueError(f"no checkpoint of {run_dir} can be read; the oldest: {err}") from err
            skipped.append(f"skipped {path}: {err}")
    return None, None, []


def check_run_dir(cfg: Config) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """Check that ``cfg`` may run in its folder; returns the checkpoint to resume from, its contents (None,
    None for a fresh start) and a line for each newer checkpoint ``resume=auto`` skipped because it cannot be
    read (it falls back to the newest that can). Raises ValueError (FileNotFoundError for a missing resume
    file) with one line naming the folder or file and the ways on. Reads only: safe on every process."""
    t, run_dir = cfg.train, cfg.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} is a file; choose another experiment.name")
    if t.overwrite and t.resume != "none":
        raise ValueError(
            f"train.overwrite=true replaces a run, train.resume={t.resume} continues one: pick one"
        )
    requested = to_dict(cfg)
    if t.resume == "none":
        if holds_run(run_dir) and not t.overwrite:
            raise ValueError(
                f"run folder {run_dir} already holds a run; continue it with train.resume=auto, pick "
                "another experiment.name, or replace it with train.overwrite=true"
            )
        return None, None, []
    skipped: list[str] = []
    if t.resume == "auto":
        path, ck, skipped = newest_readable_checkpoint(run_dir)
    else:
        path = Path(t.resume)
        ck = load_training_checkpoint(path)
    if path is None or ck is None:  # resume=auto before the first checkpoint: a fresh start of the same run
        if (run_dir / "config.yaml").is_file():
            _refuse_differences(_stored_config(run_dir), requested, run_dir / "config.yaml")
        return None, None, []
    _refuse_differences(ck["config"], requested, path)
    return path, ck, skipped


def _refuse_differences(stored: dict[str, Any], requested: dict[str, Any], source: Path) -> None:
    diff = config_differences(stored, requested)
    if diff:
        raise ValueError(
            f"train.resume: the config differs from the run's ({source}) in {', '.join(diff)}; a resume "
            "may change only paths, train.epochs, workers and the log/eval/checkpoint periods "
            "(docs/engine.md); start another experiment.name for a different run"
        )


def clear_run_dir(run_dir: Path) -> None:
    """Delete the files of the run in ``run_dir`` (``RUN_FILES``; train.overwrite=true)."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
