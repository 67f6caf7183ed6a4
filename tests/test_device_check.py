"""benchmarks/device_check.sh in CPU smoke mode: it runs every check and writes its results and log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_cpu_smoke_writes_its_files(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (tmp_path / "device_check.log").read_text()
    assert "smoke=1" in log and "0 failed check(s)" in log
    for name in ("loss_overhead", "llm_loss_memory", "step_attribution"):
        assert f"== {name}: exit 0" in log, name
        assert json.loads((tmp_path / f"{name}.json").read_text()), name
    attribution = json.loads((tmp_path / "step_attribution.json").read_text())
    assert set(attribution["cases"]) == {"classification", "llm-online", "llm-cache"}
    for case in attribution["cases"].values():
        assert 0 < case["cpu_fraction"]["median"] < 1 and len(case["per_step"]) == 2


def test_device_check_refuses_unknown_arguments(tmp_path):
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--gpu-please"],
        env={**os.environ, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2 and "unknown argument --gpu-please" in out.stderr
