"""Pre-flight checks of a run built from its config, before any download or training: the run folder can
be written, and the teacher a distilling run needs has weights (present and loadable, or the config says
the teacher is random). Each failure is one error naming the path and the way on. The data comes next:
the task's data set builders name the folder they looked in and the URL they download from."""

from __future__ import annotations

import os
from pathlib import Path

from eakd.engine.checkpoint import load_checkpoint
from eakd.engine.config import RANDOM_TEACHER, Config, ConfigError


def check_writable(folder: Path, key: str) -> None:
    """``folder`` exists as a folder or can be made: its nearest existing parent is a writable folder
    (PermissionError / NotADirectoryError naming it and ``key``, the setting to change). Both runners
    call it before anything slow (the engine with experiment.output_dir, the LLM runner with
    train.output_dir)."""
    existing = next(p for p in (folder, *folder.parents, Path(".")) if p.exists())
    fix = f"set {key} to a folder you can write"
    if not existing.is_dir():
        raise NotADirectoryError(f"run folder {folder} cannot be made: {existing} is a file; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"run folder {folder} cannot be written: no write permission on {existing}; {fix}"
        )


def check_teacher(cfg: Config) -> None:
    """A run that distils (``model.teacher`` set and ``distill.method`` not "none") needs the teacher's
    trained weights: ``model.teacher_checkpoint`` names a file that exists and loads (weights only), or
    ``teacher_options.pretrained`` loads the library's weights, or the checkpoint is ``"random"``, said in
    so many words. ConfigError / FileNotFoundError / ValueError naming the key, the file and where to get it.
    """
    model = cfg.model
    if model.teacher is None or cfg.distill.method == "none" or model.teacher_checkpoint == RANDOM_TEACHER:
        return
    if model.teacher_checkpoint is None:
        if model.teacher_options.get("pretrained"):
            return
        raise ConfigError(
            f"model.teacher_checkpoint is not set: distilling from teacher {model.teacher!r} needs its "
            "trained weights; set model.teacher_checkpoint=FILE (or "
            f"model.teacher_checkpoint={RANDOM_TEACHER} for a randomly initialised teacher, in tests)"
        )
    path = Path(model.teacher_checkpoint)
    if not path.is_file():
        how = f"get it: {model.teacher_source}" if model.teacher_source else "train the teacher first"
        raise FileNotFoundError(
            f"teacher checkpoint {path} (model.teacher_checkpoint) does not exist; {how}, or set "
            "model.teacher_checkpoint=FILE"
        )
    load_checkpoint(path)  # a ValueError naming the file when it cannot be read


def preflight(cfg: Config) -> None:
    """Every check above, in order: the run folder, then the teacher (before the data is looked at)."""
    check_writable(cfg.run_dir, "experiment.output_dir")
    check_teacher(cfg)
