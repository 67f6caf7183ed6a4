"""Weight diagnostics on fixed tensors: ESS, correlation, per-class means, quantiles, files written."""

import math

import numpy as np
import pytest
import torch

from eakd.engine.diagnostics import Diagnostics, class_means, effective_sample_size, pearson, summarize
from eakd.engine.logs import read_csv


def test_effective_sample_size():
    assert effective_sample_size(torch.ones(8)) == pytest.approx(1.0)
    assert effective_sample_size(torch.tensor([0.0, 0.0, 0.0, 2.0])) == pytest.approx(0.25)
    # (1 + 2 + 3)^2 / (3 * (1 + 4 + 9)) = 36 / 42
    assert effective_sample_size(torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(36 / 42)
    assert math.isnan(effective_sample_size(torch.zeros(3)))


def test_pearson():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert pearson(a, torch.tensor([1.0, -1.0, -1.0, 1.0])) == pytest.approx(0.0)
    assert math.isnan(pearson(a, torch.ones(4)))


def test_class_means():
    classes, means, counts = class_means(torch.tensor([1.0, 3.0, 2.0, 5.0]), torch.tensor([2, 2, 0, 7]))
    assert classes.tolist() == [0, 2, 7]
    assert means.tolist() == [2.0, 2.0, 5.0]
    assert counts.tolist() == [1, 2, 1]


def test_summarize_quantiles():
    w = torch.arange(101, dtype=torch.float32) / 100  # 0.00 .. 1.00: quantile q is q
    stats = summarize({"weights": w, "h_t": 2 * w, "h_s": w, "per_sample": w})
    assert stats["w_q05"] == pytest.approx(0.05) and stats["w_q95"] == pytest.approx(0.95)
    assert stats["h_t_q50"] == pytest.approx(1.0) and stats["w_mean"] == pytest.approx(0.5)
    assert stats["corr_w_loss"] == pytest.approx(1.0) and stats["n"] == 101
    no_weights = summarize({"h_t": w, "h_s": w})  # weighting "none": entropies only
    assert "ess" not in no_weights and "h_s_q25" in no_weights


def test_diagnostics_files(tmp_path):
    diag = Diagnostics(tmp_path, samples=4)
    for step in range(2):
        w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) + step
        diag.add(
            {"weights": w, "h_t": w, "h_s": w, "per_sample": -w, "target": torch.tensor([0, 0, 1, 1, 2])}
        )
    stats = diag.flush(step=2, epoch=0.5)
    assert stats["corr_w_loss"] == pytest.approx(-1.0) and stats["n"] == 10
    assert diag.flush(step=3, epoch=0.6) is None  # empty window
    diag.end_epoch(1)
    rows = read_csv(tmp_path / "diagnostics.csv")
    assert len(rows) == 1 and rows[0]["step"] == "2" and float(rows[0]["ess"]) == pytest.approx(stats["ess"])
    classes = read_csv(tmp_path / "class_weights.csv")
    assert [(r["class"], float(r["mean_weight"]), r["count"]) for r in classes] == [
        ("0", 2.0, "4"),
        ("1", 4.0, "4"),
        ("2", 5.5, "2"),
    ]
    npz = np.load(tmp_path / "diagnostics" / "samples-e0001.npz")
    assert len(npz["weights"]) == 4 and (npz["step"] == 2).all()
    resumed = Diagnostics(tmp_path, start_step=1)  # rows after the resume step are cut
    assert read_csv(tmp_path / "diagnostics.csv") == []
    resumed.flush(step=2, epoch=0.5)  # an empty window writes nothing
