"""Per-RoI diagnostics of a detection run: IoU with the ground truth, sampled CSV rows, resume, the plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
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


def _plain_ranks(x: list[float]) -> list[float]:
    """Average 1-based ranks by counting: rank = (# smaller) + (# equal + 1) / 2."""
    return [sum(v < a for v in x) + (sum(v == a for v in x) + 1) / 2 for a in x]


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_roi_summary_matches_plain_counting() -> None:
    import random

    from eakd.detection.roi_summary import AMBIGUOUS, ranks, spearman, summarise

    rng = random.Random(0)
    rows = []
    for i in range(200):
        iou = rng.choice([0.0, 0.1, 0.35, 0.45, 0.55, 0.65, 0.8, 1.0]) if i % 3 else rng.random()
        rows.append({"weight": str(round(rng.uniform(0.2, 2.0), 2)), "iou": str(iou),
                     "teacher_maxprob": str(rng.random()), "label": str(int(iou >= 0.5) * 3)})  # fmt: skip
    w = [float(r["weight"]) for r in rows]
    rel = [v / (sum(w) / len(w)) for v in w]
    iou = [float(r["iou"]) for r in rows]
    assert ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert ranks(np.array(w)).tolist() == _plain_ranks(w)  # ties: weights rounded to 2 decimals
    s = summarise(rows)
    assert s["n"] == 200
    assert s["spearman_iou"] == pytest.approx(_pearson(_plain_ranks(rel), _plain_ranks(iou)))
    conf = [float(r["teacher_maxprob"]) for r in rows]
    assert s["spearman_confidence"] == pytest.approx(_pearson(_plain_ranks(rel), _plain_ranks(conf)))
    near = [r for r, v in zip(rel, iou, strict=True) if 0.3 <= v < 0.5]
    assert s["iou"]["0.3-0.5"]["weight"] == pytest.approx(sum(near) / len(near))
    assert s["iou"]["0.3-0.5"]["share"] == pytest.approx(len(near) / 200)
    clear = [r for r, v in zip(rel, iou, strict=True) if v >= 0.7]  # the last band holds IoU 1.0
    assert s["iou"]["0.7-1"]["weight"] == pytest.approx(sum(clear) / len(clear))
    assert sum(b["share"] for b in s["iou"].values()) == pytest.approx(1.0)
    assert sum(b["share"] for b in s["confidence"].values()) == pytest.approx(1.0)
    background = [r for r, v in zip(rel, iou, strict=True) if v < 0.5]
    assert s["background_weight"] == pytest.approx(sum(background) / len(background))
    ordered = sorted(rel)  # the 0.9 quantile by linear interpolation: position 0.9 * 199 = 179.1
    cut = ordered[179] + 0.1 * (ordered[180] - ordered[179])
    top = [v for r, v in zip(rel, iou, strict=True) if r >= cut]
    assert s["top_ambiguous"] == pytest.approx(sum(AMBIGUOUS[0] <= v < AMBIGUOUS[1] for v in top) / len(top))
    assert s["all_ambiguous"] == pytest.approx(sum(AMBIGUOUS[0] <= v < AMBIGUOUS[1] for v in iou) / 200)
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)))
    with pytest.raises(ValueError, match="no RoI rows"):
        summarise([])


def test_the_study_summary_pools_finished_seeds_and_splits_off_the_last_epoch(tmp_path: Path) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "det_roi_weights.py"
    spec = importlib.util.spec_from_file_location("det_roi_weights", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    for seed, finished in ((0, True), (1, True), (2, False)):  # seed 2 was stopped: left out
        run = tmp_path / f"ea-kd-seed{seed}"
        log = RoILog(run, every=1, samples=4)
        for step in range(1, 9):  # 2 epochs of 4 steps
            log(step / 4, _last(8))
        if finished:
            (run / "summary.json").write_text("{}")
    s = bench.arm_summary(tmp_path, "ea-kd")
    assert s["seeds"] == ["0", "1"] and s["all"]["n"] == 2 * 8 * 4
    assert s["last_epoch"]["n"] == 2 * 4 * 4  # steps at epochs 1.25 .. 2.0
    assert list(s["per_seed"]) == ["0", "1"] and s["per_seed"]["0"]["n"] == 32
    assert bench.arm_summary(tmp_path, "ea-feat") is None
    text = bench.table({"arms": {"ea-kd": s}})
    assert "| ea-kd (all steps, seeds 0,1) | 64 |" in text
    assert "| ea-kd (last epoch, seeds 0,1) | 32 |" in text
