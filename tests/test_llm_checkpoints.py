"""resume_from_checkpoint=auto picks the latest complete Trainer checkpoint and names each folder it passes
over (killed mid-write: no trainer state, no selection, a weight file cut short)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")
from safetensors.torch import save_file

from eakd.llm.callbacks import SELECTION
from eakd.llm.checkpoints import resume_checkpoint


def _checkpoint(out: Path, step: int, state: bool = True, selection: bool = True, cut: int = 0) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if selection:
        (folder / SELECTION).write_bytes(b"x")
    weights = folder / "model.safetensors"
    save_file({"w": torch.zeros(256)}, str(weights))
    if cut:
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) - cut])
    return folder


def test_auto_takes_the_latest_complete_checkpoint_and_names_the_ones_passed_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = SimpleNamespace(resume_from_checkpoint="auto", output_dir=str(tmp_path))
    assert resume_checkpoint(args) is None  # nothing yet: a fresh start
    good = _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 20, cut=64)  # its weights cut short
    _checkpoint(tmp_path, 30, selection=False)
    _checkpoint(tmp_path, 40, state=False)
    (tmp_path / "checkpoint-tmp").mkdir()  # not a step: ignored
    assert resume_checkpoint(args) == str(good)
    err = capsys.readouterr().err
    for step, why in ((20, "model.safetensors unreadable"), (30, SELECTION), (40, "trainer_state.json")):
        assert f"checkpoint-{step} (" in err and why in err.split(f"checkpoint-{step} (")[1].splitlines()[0]
    assert "checkpoint-10" not in err and "checkpoint-tmp" not in err


def test_a_named_checkpoint_must_be_a_checkpoint_folder(tmp_path: Path) -> None:
    args = SimpleNamespace(resume_from_checkpoint=str(tmp_path / "nope"), output_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder"):
        resume_checkpoint(args)
    args.resume_from_checkpoint = str(_checkpoint(tmp_path, 5))
    assert resume_checkpoint(args) == args.resume_from_checkpoint


def test_llm_train_refuses_an_output_folder_it_cannot_make_before_loading_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pre-flight of `eakd llm train`: train.output_dir under a file is one line, exit 2, before any model
    is loaded."""
    from eakd.cli import main
    from eakd.llm import run

    def no_teacher(*a: object, **k: object) -> None:
        raise AssertionError("the teacher was loaded before the output folder was checked")

    monkeypatch.setattr(run, "load_teacher", no_teacher)
    (tmp_path / "afile").write_text("x")
    argv = ["llm", "train", "llm/base", f"train.output_dir={tmp_path / 'afile' / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "afile is a file; set train.output_dir" in err and err.count("\n") == 1
