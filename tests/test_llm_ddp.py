"""EAKDTrainer under torchrun: 2 CPU processes (gloo) end with the student of 1 process: DDP online, from a
teacher cache (the loss is normalised by the token count over all processes) and on generated responses
(lmbda, seq_kd: the same draws on every process, the generated tokens counted over all), and FSDP2 (full
shard) with the fused loss reading the lm_head. FSDP1 needs a GPU under Accelerate and is not run here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "llm_ddp_run.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(cmd: list[str], cwd: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent / "src")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "fsdp"), [("online", ""), ("offline", ""), ("onpolicy", ""), ("online", "2")]
)
def test_two_processes_match_one(mode: str, fsdp: str, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(SCRIPT), str(one), mode, "4"], tmp_path)
    _run([*TORCHRUN, str(SCRIPT), str(two), mode, "2", fsdp, "fused"], tmp_path)
    a = torch.load(one / "student.pt")
    b = torch.load(two / "student.pt")
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=1e-4, atol=1e-6, msg=name)
    if mode == "onpolicy":  # every step trained on generated responses (student's or teacher's, seq_kd)
        assert len(torch.load(one / "generated.pt")) == len(torch.load(two / "generated.pt")) == 3
