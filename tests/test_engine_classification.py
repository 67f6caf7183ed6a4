"""Classification through the registry task: zoo models, synthetic images, KD/MLKD/vanilla, bf16, eval CLI."""

import json

import pytest
import torch

from eakd.cli import main
from eakd.engine.config import load_config
from eakd.engine.loop import train
from eakd.engine.task import build_task

SYNTH = "data.options={num_samples: 48, num_classes: 10, channels: 1, size: 28}"


def config(tmp_path, *overrides):
    return load_config(
        None,
        [
            f"experiment.output_dir={tmp_path}",
            "data.name=synthetic",
            SYNTH,
            "model.student=fmnist_tiny",
            "model.teacher=fmnist_cnn",
            "model.teacher_checkpoint=random",  # plumbing tests: an untrained teacher, said explicitly
            "train.epochs=1",
            "train.batch_size=16",
            "train.num_workers=0",
            "train.diag_every=1",
            "train.cpu=true",
            *overrides,
        ],
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ("experiment.name=kd_ea", "distill.method=kd", "distill.weighting=ea", "distill.tau=2.0"),
        ("experiment.name=dkd_er", "distill.method=dkd", "distill.weighting=er", "distill.warmup_epochs=1"),
        ("experiment.name=vanilla", "distill.method=none", "distill.ce_weight=1.0"),
        ("experiment.name=bf16", "distill.method=kd", "train.mixed_precision=bf16"),
    ],
)
def test_methods_train(tmp_path, overrides):
    cfg = config(tmp_path, *overrides)
    summary = train(cfg)
    assert summary["steps"] == 3 and 0 <= summary["best"]["value"] <= 100
    losses = (cfg.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert ("train_loss_kd" in losses) == (cfg.distill.method != "none")
    assert (cfg.run_dir / "diagnostics.csv").exists() == (cfg.distill.method != "none")


def test_two_views_mlkd(tmp_path):
    cfg = config(tmp_path, "experiment.name=mlkd", "distill.method=mlkd", "data.two_views=true")
    task = build_task(cfg)
    weak, strong, _ = task.train_set[0]
    assert weak.shape == strong.shape == (1, 28, 28)
    summary = train(cfg, task)
    assert summary["steps"] == 3
    header = (cfg.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "train_loss_kd" in header and "train_loss_cc" in header and "train_loss_bc" in header


def test_policy_tau_defaults(tmp_path):
    assert build_task(config(tmp_path, "distill.weighting=ea")).loss.policy.tau == 3.0
    assert build_task(config(tmp_path, "distill.weighting=er")).loss.policy.tau == 4.0
    assert build_task(config(tmp_path, "distill.tau=2.5")).loss.policy.tau == 2.5


def test_weighting_none_ignores_policy_settings(tmp_path):
    cfg = config(tmp_path, "distill.weighting=none", "distill.tau=2.0", "distill.h_ub=100.0")
    loss = build_task(cfg).loss
    assert loss.policy is None


def test_eval_command(tmp_path, capsys):
    cfg = config(tmp_path, "experiment.name=evalme")
    train(cfg)
    capsys.readouterr()
    assert main(["eval", str(cfg.run_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    best = json.loads((cfg.run_dir / "summary.json").read_text())["best"]
    assert out["weights"].endswith("best.pt")
    assert out["top1"] == pytest.approx(best["metrics"]["top1"])
    student = {k.removeprefix("student."): v for k, v in torch.load(cfg.run_dir / "best.pt")["model"].items()}
    torch.save(student, tmp_path / "bare.pt")  # a plain state dict of the student
    assert main(["eval", str(cfg.run_dir), "--weights", str(tmp_path / "bare.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(best["metrics"]["top1"])


def test_teacher_is_frozen_and_unwrapped(tmp_path):
    cfg = config(tmp_path, "experiment.name=frozen")
    task = build_task(cfg)
    before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    train(cfg, task)
    assert not task.teacher.training
    assert all(not p.requires_grad for p in task.teacher.parameters())
    for k, v in task.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)  # BN running stats untouched too
