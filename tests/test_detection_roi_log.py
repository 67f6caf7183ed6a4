"""Per-RoI diagnostics of a detection run: IoU with the ground truth, sampled CSV rows, resume, the plot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from eakd.detection.distill import roi_max_iou
from eakd.detection.roi_log import COLUMNS, FILE, RoILog, roi_rows
from eakd.engine.logs import read_csv
from eakd.report import plot_roi_weights


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def test_roi_max_iou_matches_a_loop() -> None:
    proposals = [
        torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]]),
        torch.tensor([[0.0, 0, 4, 4]]),
    ]
    targets = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [6, 6, 16, 16]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    got = roi_max_iou(proposals, targets)
    expected = [max(_iou(p, t) for t in targets[0]["boxes"].tolist()) for p in proposals[0].tolist()] + [0.0]
    assert got.shape == (4,) and torch.allclose(got, torch.tensor(expected))
    assert got[0] == 1.0 and got[2] == 0.0


def _last(n: int) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    return {
        "weights": torch.rand(n, generator=g),
        "iou": torch.rand(n, generator=g),
        "target": torch.arange(n),
        "teacher_logits": torch.randn(n, 4, generator=g),
        "h_t": torch.rand(n, generator=g),
        "h_s": None,
    }


def test_rows_sample_evenly_and_hold_the_teacher_confidence() -> None:
    last = _last(10)
    rows = roi_rows(1.5, last, samples=4)
    assert [r["label"] for r in rows] == [0, 3, 6, 9]  # evenly spaced RoIs
    probs = torch.softmax(last["teacher_logits"], dim=1)  # type: ignore[arg-type]
    for row, i in zip(rows, [0, 3, 6, 9], strict=True):
        assert row["epoch"] == "1.500000" and set(row) == set(COLUMNS) - {"h_s"}
        assert math.isclose(row["teacher_maxprob"], float(probs[i].max()), rel_tol=1e-6)
        assert row["teacher_class"] == int(probs[i].argmax()) and math.isclose(
            row["weight"], float(last["weights"][i])
        )  # type: ignore[index]
    assert roi_rows(1.0, {**last, "weights": None}, 4) == []


def test_log_writes_every_nth_step_and_a_resumed_run_drops_later_rows(tmp_path: Path) -> None:
    log = RoILog(tmp_path, every=2, samples=3)
    for step in range(1, 7):
        log(step / 4, _last(5))
    rows = read_csv(tmp_path / FILE)
    assert len(rows) == 9 and sorted({r["epoch"] for r in rows}) == ["0.500000", "1.000000", "1.500000"]
    resumed = RoILog(tmp_path, every=2, samples=3)  # resumes at the 4th step (epoch 1.0)
    resumed(1.0, _last(5))
    assert sorted({r["epoch"] for r in read_csv(tmp_path / FILE)}) == ["0.500000"]
    with pytest.raises(ValueError, match="every"):
        RoILog(tmp_path, every=0)


def test_report_plots_weight_against_iou_and_confidence(tmp_path: Path) -> None:
    log = RoILog(tmp_path, every=1, samples=8)
    for step in range(1, 4):
        log(step / 3, _last(8))
    assert plot_roi_weights(read_csv(tmp_path / FILE), tmp_path / "roi.png")
    assert (tmp_path / "roi.png").stat().st_size > 0
    assert not plot_roi_weights([], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
