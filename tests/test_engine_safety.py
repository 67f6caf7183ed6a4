"""Trust in a run: no clobbered run, resume only of the same run, atomic files, TensorBoard once per step,
mid-epoch checkpoints, the non-finite guard, clear errors for bad checkpoints, and kill -9 at any point.

``dying_toy_task`` is the config-named task of the kill -9 subprocess runs: ``EAKD_DIE`` says where the
process SIGKILLs itself (``epoch:X`` in the step after fractional epoch X, ``rename:NAME`` after the
temporary file of checkpoint NAME is written and before it is renamed, ``write:NAME`` half way through
writing it).
"""

import io
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_engine_trainer import REPO, TESTS, mlp, toy_config, toy_task

from eakd.engine.checkpoint import atomic_save, latest_checkpoint, list_checkpoints, load_checkpoint
from eakd.engine.config import dump_config
from eakd.engine.data import GlobalBatches, make_loader
from eakd.engine.epoch import NonFiniteLossError
from eakd.engine.logs import CsvLog, read_csv
from eakd.engine.loop import evaluate_run, train


def dying_toy_task(cfg):
    """``toy_task`` that kills its own process with SIGKILL where ``EAKD_DIE`` says (nowhere if unset)."""
    task = toy_task(cfg)
    where, _, arg = os.environ.get("EAKD_DIE", "").partition(":")
    if where == "epoch":
        real_step = task.training_step

        def step(model, batch, epoch):
            if epoch > float(arg):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_step(model, batch, epoch)

        task.training_step = step
    elif where == "rename":
        real_replace = os.replace

        def replace(src, dst):
            if Path(dst).name == arg:
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)

        os.replace = replace
    elif where == "write":
        real_save = torch.save

        def save(obj, f):
            if Path(getattr(f, "name", "")).name == arg + ".tmp":
                buf = io.BytesIO()
                real_save(obj, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, f)

        torch.save = save
    return task


def dying(model_step, after: float):
    """A training_step that raises KeyboardInterrupt (an in-process kill) after fractional epoch ``after``."""

    def step(model, batch, epoch):
        if epoch > after:
            raise KeyboardInterrupt("killed")
        return model_step(model, batch, epoch)

    return step


def tb_points(run_dir: Path) -> list[tuple[str, int]]:
    """(tag, step) of every scalar TensorBoard shows for the run (purged points left out)."""
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return sorted((tag, e.step) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag))


def assert_same_state(got: dict, expected: dict) -> None:
    assert got["epoch"] == expected["epoch"] and got["step"] == expected["step"]
    for name, value in expected["model"].items():
        torch.testing.assert_close(got["model"][name], value, rtol=0, atol=0, msg=name)
    for a, b in zip(got["optimizer"]["state"].values(), expected["optimizer"]["state"].values(), strict=True):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=0, atol=0)
    assert got["best"] == expected["best"]


def train_columns(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without its timing columns (which differ between runs)."""
    return [
        {k: v for k, v in row.items() if k not in ("samples_per_s", "train_time_s")}
        for row in read_csv(run_dir / "metrics.csv")
    ]


def test_a_second_run_is_refused_and_overwrite_replaces_it(tmp_path):
    sys.path.insert(0, str(TESTS))
    cfg = toy_config(tmp_path, "train.epochs=3", "train.keep_checkpoints=0")
    train(cfg, toy_task(cfg))
    before = {p: p.read_bytes() for p in cfg.run_dir.rglob("*") if p.is_file()}
    again = toy_config(tmp_path, "train.epochs=1")
    with pytest.raises(ValueError) as err:
        train(again, toy_task(again))
    message = str(err.value)
    assert "\n" not in message and str(cfg.run_dir) in message
    for way in ("train.resume=auto", "experiment.name", "train.overwrite=true"):
        assert way in message
    assert {p: p.read_bytes() for p in cfg.run_dir.rglob("*") if p.is_file()} == before  # untouched

    (cfg.run_dir / "notes.txt").write_text("mine")
    over = toy_config(tmp_path, "train.epochs=1", "train.overwrite=true")
    summary = train(over, toy_task(over))
    assert summary["steps"] == 6
    assert [p.name for p in list_checkpoints(cfg.run_dir)] == ["epoch-0001.pt"]  # the old 2 and 3 are gone
    assert [r["epoch"] for r in read_csv(cfg.run_dir / "metrics.csv")] == ["1"]
    assert (cfg.run_dir / "notes.txt").read_text() == "mine"  # not a file of the run
    with pytest.raises(ValueError, match="pick one"):
        train(toy_config(tmp_path, "train.overwrite=true", "train.resume=auto"))


def test_resume_refuses_a_different_config(tmp_path):
    sys.path.insert(0, str(TESTS))
    cfg = toy_config(tmp_path, "train.epochs=1")
    train(cfg, toy_task(cfg))
    for overrides, keys in [
        (["optim.lr=0.2"], "optim.lr"),
        (
            ["distill.hparams={temperature: 2.0}", "model.teacher=other"],
            "distill.hparams.temperature, model.teacher",
        ),
    ]:
        other = toy_config(tmp_path, "train.resume=auto", *overrides)
        with pytest.raises(ValueError, match=f"differs from the run's .*epoch-0001.pt.* in {keys};") as err:
            train(other, toy_task(other))
        assert "\n" not in str(err.value)
    more = toy_config(
        tmp_path, "train.resume=auto", "train.epochs=2", "train.log_every=1", "train.ckpt_every=2"
    )
    assert train(more, toy_task(more))["steps"] == 12  # the epoch budget and periods may change


def test_writes_go_through_a_rename(tmp_path, monkeypatch):
    """Every file the run rewrites is renamed into place (written whole to a temporary file first)."""
    sys.path.insert(0, str(TESTS))
    renamed: set[str] = set()
    real_replace = os.replace

    def replace(src, dst):
        renamed.add(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    cfg = toy_config(tmp_path, "train.epochs=1")
    train(cfg, toy_task(cfg))
    wanted = {"config.yaml", "metrics.csv", "diagnostics.csv", "class_weights.csv", "summary.json", "best.pt"}
    assert wanted | {"epoch-0001.pt", "samples-e0001.npz"} <= renamed
    assert not list(cfg.run_dir.rglob("*.tmp"))


def test_csv_rewrite_failure_keeps_the_old_file(tmp_path, monkeypatch):
    log = CsvLog(tmp_path / "m.csv")
    log.append({"epoch": 1, "a": 1.0})
    old = (tmp_path / "m.csv").read_text()

    def broken(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr("csv.DictWriter.writerows", broken)
    with pytest.raises(OSError, match="disk full"):
        log.append({"epoch": 2, "a": 2.0, "b": 3.0})  # a new column: the rewrite path
    assert (tmp_path / "m.csv").read_text() == old
    assert list(tmp_path.iterdir()) == [tmp_path / "m.csv"]


@pytest.mark.parametrize(("after", "extra"), [(2.5, []), (1.5, ["train.ckpt_every=2"])])
def test_tensorboard_has_each_step_once_after_a_resume(tmp_path, after, extra):
    """Killed after the epoch-2 checkpoint, or before the first: the resumed run shows each point once."""
    sys.path.insert(0, str(TESTS))
    full = toy_config(tmp_path / "full", *extra)
    train(full, toy_task(full))
    cfg = toy_config(tmp_path / "killed", *extra)
    task = toy_task(cfg)
    task.training_step = dying(task.training_step, after)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, task)
    # event files are read in name order, "...tfevents.<second>.<host>.<pid>.<counter>": two writers of one
    # process in one second may sort out of order (the counter as text), which a real restart never does
    time.sleep(1.1)
    resumed = toy_config(tmp_path / "killed", "train.resume=auto", *extra)
    train(resumed, toy_task(resumed))
    points = tb_points(cfg.run_dir)
    assert len(points) == len(set(points))
    assert points == tb_points(full.run_dir)


def test_mid_epoch_checkpoints_resume_exactly(tmp_path):
    """Killed in epoch 3 after its step-14 checkpoint: the resumed run ends bit-identical."""
    sys.path.insert(0, str(TESTS))
    settings = ("data.options={dropout: 0.2}", "train.ckpt_every_steps=2", "train.keep_checkpoints=0")
    full = toy_config(tmp_path / "full", *settings)
    train(full, toy_task(full))
    cfg = toy_config(tmp_path / "killed", *settings)
    task = toy_task(cfg)
    task.training_step = dying(task.training_step, 2.5)  # batch 4 of 6 of epoch 3, steps 13..18
    with pytest.raises(KeyboardInterrupt):
        train(cfg, task)
    names = [p.name for p in list_checkpoints(cfg.run_dir)]
    assert names[-3:] == ["epoch-0001-step-00000010.pt", "epoch-0002.pt", "epoch-0002-step-00000014.pt"]
    resumed = toy_config(tmp_path / "killed", "train.resume=auto", *settings)
    train(resumed, toy_task(resumed))
    assert_same_state(
        load_checkpoint(latest_checkpoint(cfg.run_dir)), load_checkpoint(latest_checkpoint(full.run_dir))
    )
    assert train_columns(cfg.run_dir) == train_columns(full.run_dir)  # epoch 3's means include its start
    assert tb_points(cfg.run_dir) == tb_points(full.run_dir)


class RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 24

    def __getitem__(self, i):
        return torch.rand(())  # like a random augmentation, drawn in the worker


def test_worker_draws_do_not_depend_on_where_the_epoch_starts():
    def batches(start, workers):
        sampler = GlobalBatches(24, 4, 0, 1, seed=1, epoch=0, shuffle=True, start=start)
        return [b.tolist() for b in make_loader(RandomItems(), sampler, workers, None, seed=7)]

    whole = batches(0, 2)
    assert batches(3, 2) == whole[3:]
    assert batches(3, 1) == whole[3:]  # nor on the number of workers


@pytest.mark.parametrize("log_every", [2, 0])
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, log_every):
    """From step 10 on the kd term is NaN: read at the step-10 log (log_every=2: the weights turn NaN
    there), else at the end of epoch 2 (a NaN added to the value only, so the weights stay finite and
    the core's own finiteness checks of the logits do not stop the run first)."""
    sys.path.insert(0, str(TESTS))
    cfg = toy_config(tmp_path, f"train.log_every={log_every}", "train.keep_checkpoints=0")
    task = toy_task(cfg)
    real_step = task.training_step

    def nan_step(model, batch, epoch):
        terms = real_step(model, batch, epoch)
        kd = terms["loss_kd"] * math.nan if log_every else terms["loss_kd"] + math.nan
        return {**terms, "loss_kd": kd} if epoch > 1.5 else terms

    task.training_step = nan_step
    with pytest.raises(
        NonFiniteLossError, match=r"loss term 'loss_kd' is not finite .* at optimiser step 10;"
    ) as err:
        train(cfg, task)
    assert "epoch-0001.pt holds the last good state" in str(err.value)
    assert [p.name for p in list_checkpoints(cfg.run_dir)] == ["epoch-0001.pt"]
    for path in (latest_checkpoint(cfg.run_dir), cfg.run_dir / "best.pt"):
        ck = load_checkpoint(path)
        assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert [r["epoch"] for r in read_csv(cfg.run_dir / "metrics.csv")] == ["1"]


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files that are no checkpoint, each with (a regex of) what the error must say."""
    good = tmp_path / "good.pt"
    atomic_save({"model": mlp(8, 16, 5, 0.0).state_dict(), "epoch": 1}, good)
    files = {
        "missing": (tmp_path / "missing.pt", "does not exist"),
        "directory": (tmp_path, "is a directory"),
        "empty": (tmp_path / "empty.pt", r"is empty \(0 bytes\)"),
        "random": (tmp_path / "random.pt", "cannot be read"),
        "truncated": (tmp_path / "truncated.pt", "cannot be read"),
        "code": (tmp_path / "code.pt", "holds Python objects .*, which eakd never unpickles"),
        "not a mapping": (tmp_path / "list.pt", "holds a list"),
    }
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "random.pt").write_bytes(bytes(range(194, 256)) * 50)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with open(tmp_path / "code.pt", "wb") as f:
        torch.save(Exploit(), f)
    torch.save([1, 2], tmp_path / "list.pt")
    return files


def test_bad_checkpoints_are_one_clear_error(tmp_path):
    sys.path.insert(0, str(TESTS))
    files = bad_files(tmp_path / "files")
    student = mlp(8, 16, 5, 0.0).state_dict()
    torch.save(student, tmp_path / "files" / "state_dict.pt")  # fine for eval, foreign for resume
    torch.save(mlp(8, 7, 5, 0.0).state_dict(), tmp_path / "files" / "other_model.pt")
    torch.save({"lr": 0.1}, tmp_path / "files" / "no_weights.pt")
    resume_only = {"state dict": (tmp_path / "files" / "state_dict.pt", "not an eakd training checkpoint")}
    eval_only = {
        "other model": (tmp_path / "files" / "other_model.pt", "does not fit the model: size mismatch"),
        "no weights": (tmp_path / "files" / "no_weights.pt", "holds no model weights"),
    }
    for kind, (path, what) in {**files, **resume_only}.items():
        cfg = toy_config(tmp_path / "runs", f"train.resume={path}")
        with pytest.raises((ValueError, FileNotFoundError), match=what) as err:
            train(cfg, toy_task(cfg))
        assert str(path) in str(err.value) and "\n" not in str(err.value), kind
        assert "weights_only" not in str(err.value), kind  # never torch's advice to unpickle the file
    cfg = toy_config(tmp_path / "runs")
    for kind, (path, what) in {**files, **eval_only}.items():
        with pytest.raises((ValueError, FileNotFoundError), match=what) as err:
            evaluate_run(cfg, path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), kind
    assert "top1" in evaluate_run(cfg, tmp_path / "files" / "state_dict.pt")  # a bare student still loads


def test_resume_auto_falls_back_to_the_newest_checkpoint_that_reads(tmp_path, capsys):
    """A truncated latest checkpoint: resume=auto says so and continues from the one before; the run ends
    as an uninterrupted one. With no readable checkpoint at all it is an error, never a fresh start."""
    cfg = toy_config(tmp_path, "train.epochs=3", "train.keep_checkpoints=0")
    want = train(cfg, toy_task(cfg))["last"]
    latest = latest_checkpoint(cfg.run_dir)
    assert latest is not None and latest.name == "epoch-0003.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    capsys.readouterr()
    again = toy_config(tmp_path, "train.epochs=3", "train.keep_checkpoints=0", "train.resume=auto")
    assert train(again, toy_task(again))["last"] == want
    out = capsys.readouterr().out
    assert f"train.resume=auto: skipped {latest}: checkpoint {latest} cannot be read" in out
    assert f"resumed from {cfg.run_dir / 'checkpoints' / 'epoch-0002.pt'}" in out
    for path in list_checkpoints(cfg.run_dir):
        path.write_bytes(b"junk")
    with pytest.raises(ValueError, match=f"no checkpoint of {cfg.run_dir} can be read"):
        train(again, toy_task(again))


def _eakd(args: list[str], cwd: Path, die: str = "") -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO / "src")]),
        "OMP_NUM_THREADS": "1",
        "EAKD_DIE": die,
    }
    return subprocess.run(
        [sys.executable, "-m", "eakd", "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


KILL_SETTINGS = (
    "imports=[test_engine_trainer, test_engine_safety]",
    "task=test_engine_safety:dying_toy_task",
    "data.options={dropout: 0.2}",
    "train.ckpt_every=2",
    "train.ckpt_every_steps=4",  # 6 steps an epoch: mid-epoch checkpoints at steps 4, 8, 16, 20
    "train.keep_checkpoints=0",
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    cfg = toy_config(out, *KILL_SETTINGS)
    dump_config(cfg, out / "cfg.yaml")
    proc = _eakd([str(out / "cfg.yaml")], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg.run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    ("die", "latest"),
    [
        ("epoch:0.5", None),  # before the first checkpoint
        ("epoch:2.8", "epoch-0002-step-00000016.pt"),  # mid-epoch
        ("rename:epoch-0002.pt", "epoch-0001-step-00000008.pt"),  # written whole, not yet renamed
        ("write:epoch-0002-step-00000016.pt", "epoch-0002.pt"),  # half written
    ],
)
def test_kill_9_then_resume_ends_bit_identical(tmp_path, uninterrupted, die, latest):
    cfg = toy_config(tmp_path, *KILL_SETTINGS)
    dump_config(cfg, tmp_path / "cfg.yaml")
    killed = _eakd([str(tmp_path / "cfg.yaml")], tmp_path, die)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    found = latest_checkpoint(cfg.run_dir)
    assert (found.name if found else None) == latest
    resumed = _eakd([str(tmp_path / "cfg.yaml"), "train.resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_state(
        load_checkpoint(latest_checkpoint(cfg.run_dir)), load_checkpoint(latest_checkpoint(uninterrupted))
    )
    assert train_columns(cfg.run_dir) == train_columns(uninterrupted)
    assert tb_points(cfg.run_dir) == tb_points(uninterrupted)
