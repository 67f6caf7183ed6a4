"""Pre-flight of `eakd train` (eakd.engine.preflight) and what a config must say: no empty config, no random
teacher unless asked for, the run folder writable, the teacher before the data, failed downloads named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from eakd.cli import main
from eakd.engine.config import ConfigError, load_config
from eakd.engine.preflight import check_teacher, check_writable, preflight
from eakd.vision.datasets import downloaded

TINY = (
    "experiment: {name: tiny, output_dir: runs}\n"
    "data: {name: synthetic, options: {num_samples: 32, num_classes: 4, channels: 1, size: 8}}\n"
    "model: {student: fmnist_tiny, teacher: fmnist_cnn}\n"
    "train: {epochs: 1, batch_size: 16, num_workers: 0, diag_every: 0, cpu: true}\n"
)


def one_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of ``eakd ARGV``, which must exit 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_config_is_refused(tmp_path: Path, capsys, text: str) -> None:
    (tmp_path / "empty.yaml").write_text(text)
    err = one_error(["train", str(tmp_path / "empty.yaml")], capsys)
    assert f"config file {tmp_path / 'empty.yaml'} is empty" in err and "eakd configs copy" in err
    assert not (Path("runs") / "run").exists()


def test_binary_junk_as_a_config_names_the_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "junk.yaml").write_bytes(bytes(range(256)) * 4)
    err = one_error(["train", str(tmp_path / "junk.yaml")], capsys)
    assert f"config file {tmp_path / 'junk.yaml'} is not a text (YAML) file" in err


def test_a_distilling_config_without_teacher_weights_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    err = one_error(["train", "tiny.yaml"], capsys)
    assert "model.teacher_checkpoint is not set" in err and "model.teacher_checkpoint=random" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    # the student alone needs ce_weight > 0 (main's one ce_weight default is 0)
    for fine in (["distill.method=none", "distill.ce_weight=1"], ["model.teacher=null"]):
        check_teacher(load_config("tiny.yaml", fine))
    check_teacher(load_config("tiny.yaml", ["model.teacher_checkpoint=random"]))
    check_teacher(load_config("tiny.yaml", ["model.teacher_options={pretrained: true}"]))  # library weights
    assert main(["train", "tiny.yaml", "model.teacher_checkpoint=random"]) == 0  # said explicitly: trains


def test_the_teacher_is_checked_before_the_data(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text("data: {name: fashion_mnist}\nmodel: {teacher: fmnist_cnn}\n")
    source = "model.teacher_source='`eakd train demo/teacher`'"
    argv = ["train", "tiny.yaml", "data.root=nodata", "model.teacher_checkpoint=t.pt"]
    err = one_error([*argv, source], capsys)
    assert "teacher checkpoint t.pt (model.teacher_checkpoint) does not exist; get it: `eakd train" in err
    (tmp_path / "t.pt").write_bytes(b"PK\x03\x04" + bytes(40))  # truncated
    err = one_error(argv, capsys)
    assert "checkpoint t.pt cannot be read" in err
    torch.save({"w": torch.zeros(1)}, tmp_path / "t.pt")  # loadable: now the data is looked at
    err = one_error(argv, capsys)
    assert "Fashion-MNIST not found" in err


def test_the_run_folder_must_be_writable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"afile is a file; set experiment\.output_dir"):
        preflight(load_config(None, [f"experiment.output_dir={tmp_path / 'afile' / 'runs'}"]))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: nothing to refuse
        pytest.skip("running as a user who may write any folder")
    with pytest.raises(PermissionError, match=f"no write permission on {locked}; set train.output_dir"):
        check_writable(locked / "runs", "train.output_dir")


def test_a_failed_download_says_what_from_where_and_where_to_put_it(tmp_path: Path) -> None:
    def offline() -> None:
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    with pytest.raises(FileNotFoundError) as err:
        downloaded("CIFAR-100", "https://example.org/c.tar.gz", tmp_path, offline)
    assert str(err.value).startswith(
        f"CIFAR-100: downloading https://example.org/c.tar.gz into {tmp_path} failed (<urlopen error"
    )
    assert f"unpack it into {tmp_path}" in str(err.value)
    assert downloaded("x", "u", tmp_path, lambda: 3) == 3


def test_an_empty_config_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "e.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(tmp_path / "e.yaml")
