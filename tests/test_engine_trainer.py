"""The training loop on a tiny MLP task: a run's files, exact resume, 2-process DDP = 1 process, eval CLI.

``toy_task`` doubles as a config-named task (``task: test_engine_trainer:toy_task``) for the subprocess runs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from eakd.distill import DistillLoss
from eakd.engine.checkpoint import atomic_save, latest_checkpoint, list_checkpoints, load_checkpoint
from eakd.engine.config import Config, dump_config, load_config
from eakd.engine.data import GlobalBatches, shard
from eakd.engine.loop import seed_everything, train
from eakd.engine.task import Task, build_task
from eakd.vision.task import ClassificationTask

TESTS = Path(__file__).parent
REPO = TESTS.parent


def mlp(d_in: int, hidden: int, classes: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))


def toy_task(cfg: Config) -> ClassificationTask:
    """KD task on fixed random data: MLP student (no batch norm), frozen random MLP teacher."""
    opts = cfg.data.options
    n, d, k = opts.get("n", 96), 8, 5
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n + 40, d, generator=g)
    teacher = mlp(d, 32, k, 0.0)
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        y = teacher(x).argmax(-1)
    torch.manual_seed(cfg.experiment.seed)  # the same initial student however often a test builds it
    student = mlp(d, 16, k, opts.get("dropout", 0.0))
    loss = DistillLoss.from_config(cfg.distill)
    return ClassificationTask(
        student,
        teacher,
        loss,
        TensorDataset(x[:n], y[:n]),
        TensorDataset(x[n:], y[n:]),
        cfg.distill.ce_weight,
    )


def toy_config(tmp_path: Path, *overrides: str) -> Config:
    return load_config(
        None,
        [
            "imports=[test_engine_trainer]",
            "task=test_engine_trainer:toy_task",
            f"experiment.output_dir={tmp_path}",
            "experiment.name=run",
            "experiment.seed=3",
            "model.teacher=mlp",
            "model.teacher_checkpoint=random",  # the toy task builds its own teacher
            "distill.method=kd",
            "distill.weighting=ea",
            "distill.ce_weight=0.1",
            "distill.kd_weight=0.9",
            "distill.hparams={temperature: 4.0}",
            "optim.lr=0.1",
            "schedule.name=cosine",
            "schedule.warmup_epochs=0.5",
            "train.epochs=4",
            "train.batch_size=16",
            "train.num_workers=0",
            "train.log_every=2",
            "train.diag_every=3",
            "train.ckpt_every=1",
            "train.cpu=true",
            *overrides,
        ],
    )


def test_shards_cover_global_batches():
    assert [shard(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    one = list(GlobalBatches(10, 4, 0, 1, seed=1, epoch=2, shuffle=True))
    two = [list(GlobalBatches(10, 4, r, 2, seed=1, epoch=2, shuffle=True)) for r in range(2)]
    assert [a + b for a, b in zip(*two, strict=True)] == one
    assert sorted(i for b in one for i in b) == list(range(10))
    assert len(GlobalBatches(9, 4, 0, 2, 0, 0, False)) == 2  # a last batch of 1 < 2 processes is dropped


def test_run_writes_its_files(tmp_path):
    sys.path.insert(0, str(TESTS))
    cfg = toy_config(tmp_path, "train.epochs=2", "train.grad_accum=2", "train.keep_checkpoints=1")
    summary = train(cfg, toy_task(cfg))
    run = cfg.run_dir
    for name in (
        "config.yaml",
        "metrics.csv",
        "diagnostics.csv",
        "class_weights.csv",
        "summary.json",
        "best.pt",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())
    assert [p.name for p in list_checkpoints(run)] == ["epoch-0002.pt"]  # pruned to 1
    assert load_config(run / "config.yaml") == cfg
    saved = json.loads((run / "summary.json").read_text())
    assert saved["best"]["metric"] == "top1" and 0 <= saved["best"]["value"] <= 100
    assert summary["steps"] == 2 * 3  # 96 samples / 16 = 6 batches, 2 per optimiser step
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for col in (
        "epoch",
        "lr",
        "train_loss",
        "train_loss_kd",
        "train_loss_ce",
        "eval_top1",
        "eval_top5",
        "best_top1",
        "samples_per_s",
    ):
        assert col in header, col
    assert len(rows) == 3
    npz = np.load(run / "diagnostics" / "samples-e0001.npz")
    assert set(npz.files) >= {"step", "weights", "h_t", "h_s", "per_sample", "target"}
    assert (npz["weights"] >= 0).all() and (npz["weights"] <= np.log(5)).all()


def test_resume_continues_exactly(tmp_path):
    """Kill during epoch 3 (after the epoch-2 checkpoint), resume=auto: same weights as without the kill."""
    sys.path.insert(0, str(TESTS))
    full_cfg = toy_config(tmp_path / "full", "data.options={dropout: 0.2}")
    train(full_cfg, toy_task(full_cfg))
    expected = load_checkpoint(latest_checkpoint(full_cfg.run_dir))

    cfg = toy_config(tmp_path / "killed", "data.options={dropout: 0.2}")
    task = toy_task(cfg)
    real_step = task.training_step

    def dying_step(model, batch, epoch):
        if epoch > 2.5:
            raise KeyboardInterrupt("killed")
        return real_step(model, batch, epoch)

    task.training_step = dying_step
    with pytest.raises(KeyboardInterrupt):
        train(cfg, task)
    assert latest_checkpoint(cfg.run_dir).name == "epoch-0002.pt"

    cfg_resume = toy_config(tmp_path / "killed", "data.options={dropout: 0.2}", "train.resume=auto")
    train(cfg_resume, toy_task(cfg_resume))
    got = load_checkpoint(latest_checkpoint(cfg.run_dir))
    assert got["epoch"] == expected["epoch"] == 4 and got["step"] == expected["step"]
    for name, value in expected["model"].items():
        torch.testing.assert_close(got["model"][name], value, rtol=0, atol=0, msg=name)
    for a, b in zip(got["optimizer"]["state"].values(), expected["optimizer"]["state"].values(), strict=True):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=0, atol=0)
    assert got["best"] == expected["best"]
    rows = (cfg.run_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def _run(cmd: list[str], cwd: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO / "src")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) ends with the student parameters of 1 process."""
    sys.path.insert(0, str(TESTS))
    cfg_one = toy_config(tmp_path / "one", "train.epochs=2", "train.grad_accum=2", "data.options={n: 100}")
    cfg_two = toy_config(tmp_path / "two", "train.epochs=2", "train.grad_accum=2", "data.options={n: 100}")
    path = tmp_path / "two.yaml"
    dump_config(cfg_two, path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run([*torchrun, "-m", "eakd", "train", str(path)], tmp_path)
    train(cfg_one, toy_task(cfg_one))
    one = load_checkpoint(latest_checkpoint(cfg_one.run_dir))
    two = load_checkpoint(latest_checkpoint(cfg_two.run_dir))
    assert one["step"] == two["step"]
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert len(two["rng"]) == 2
    s1 = json.loads((cfg_one.run_dir / "summary.json").read_text())
    s2 = json.loads((cfg_two.run_dir / "summary.json").read_text())
    assert s2["processes"] == 2
    assert s1["last"]["metrics"]["top1"] == pytest.approx(s2["last"]["metrics"]["top1"])


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "epoch-0001.pt"
    atomic_save({"epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert latest_checkpoint(tmp_path) == path  # the stray .tmp file is not taken for a checkpoint


def test_build_task_by_name_and_path(tmp_path):
    sys.path.insert(0, str(TESTS))
    task = build_task(toy_config(tmp_path))  # "test_engine_trainer:toy_task"
    assert isinstance(task, Task) and task.metric == "top1"
    with pytest.raises(ValueError, match=r"unknown task 'segmentation'; known: .*classification"):
        build_task(toy_config(tmp_path, "task=segmentation"))
    with pytest.raises(TypeError, match="not a Task"):
        build_task(toy_config(tmp_path, "imports=[builtins]", "task=builtins:str"))


def test_deterministic_flag_is_set_and_cleared():
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_gradient_clipping_limits_the_update(tmp_path):
    sys.path.insert(0, str(TESTS))
    moved = {}
    for clip in ("null", "1e-6"):
        cfg = toy_config(
            tmp_path / clip,
            "train.epochs=1",
            f"train.max_grad_norm={clip}",
            "schedule.name=constant",
            "optim.momentum=0.0",
            "optim.weight_decay=0.0",
            "train.diag_every=0",
        )
        task = toy_task(cfg)
        start = [p.detach().clone() for p in task.trainable.parameters()]
        train(cfg, task)
        with torch.no_grad():
            sq = sum(
                float((p - s).square().sum()) for p, s in zip(task.trainable.parameters(), start, strict=True)
            )
        moved[clip] = sq**0.5
    assert moved["1e-6"] <= 6 * 0.1 * 1e-6 * 1.01 < moved["null"]  # 6 steps of lr 0.1 * norm <= 1e-6
