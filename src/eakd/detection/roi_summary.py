"""Which RoIs does a weight policy emphasise? Numbers from a detection run's ``roi_weights.csv``
(``eakd.detection.roi_log``), to test the paper's argument that the high-weight RoIs are the ambiguous
ones: those near the foreground/background boundary (IoU with their ground truth near Faster R-CNN's 0.5
threshold) and those the teacher is unsure of.

Weights are reported relative to the mean weight of the rows summarised (1 = average), so runs and arms
with different weight scales read alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# IoU bands: background, the two sides of the 0.5 foreground threshold (the "ambiguous" RoIs), clear objects
IOU_BANDS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.0))
AMBIGUOUS = (0.3, 0.7)
# teacher confidence (largest class probability at T = 1, background included): the LLM study's bins
CONFIDENCE_BANDS = ((0.0, 0.5), (0.5, 0.9), (0.9, 1.0))
TOP = 0.1  # the top-weighted share of RoIs whose make-up is reported


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (1-d), ties given their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    first = np.r_[True, sorted_x[1:] != sorted_x[:-1]]  # the start of each run of equal values
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    out = np.empty(len(x))
    out[order] = average[group]
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length 1-d arrays (nan when either is constant)."""
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _band(x: np.ndarray, low: float, high: float, last: bool) -> np.ndarray:
    """Mask of low <= x < high (x <= high for the last band, which holds 1.0)."""
    return (x >= low) & ((x <= high) if last else (x < high))


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def _band_means(x: np.ndarray, w: np.ndarray, bands: tuple[tuple[float, float], ...]) -> dict[str, Any]:
    out = {}
    for i, (low, high) in enumerate(bands):
        mask = _band(x, low, high, i == len(bands) - 1)
        out[f"{low:g}-{high:g}"] = {"share": float(mask.mean()), "weight": _mean(w[mask])}
    return out


def summarise(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Numbers of a run's (or several runs') ``roi_weights.csv`` rows: ``n`` RoIs; Spearman correlation of
    the weight with the IoU and with the teacher's max probability; per IoU band and per teacher-confidence
    band the share of RoIs and their mean relative weight; background (label 0) and object RoIs' mean
    relative weight; and the share of the top ``TOP`` weighted RoIs that are ambiguous (IoU in
    ``AMBIGUOUS``) beside the share of all RoIs that are. ValueError on no rows."""
    if not rows:
        raise ValueError("no RoI rows to summarise: the run wrote no roi_weights.csv rows")
    col = {k: np.array([float(r[k]) for r in rows]) for k in ("weight", "iou", "teacher_maxprob", "label")}
    w = col["weight"] / col["weight"].mean()
    iou, conf = col["iou"], col["teacher_maxprob"]
    ambiguous = (iou >= AMBIGUOUS[0]) & (iou < AMBIGUOUS[1])
    top = w >= np.quantile(w, 1 - TOP)
    return {
        "n": len(rows),
        "spearman_iou": spearman(w, iou),
        "spearman_confidence": spearman(w, conf),
        "iou": _band_means(iou, w, IOU_BANDS),
        "confidence": _band_means(conf, w, CONFIDENCE_BANDS),
        "background_weight": _mean(w[col["label"] == 0]),
        "object_weight": _mean(w[col["label"] > 0]),
        "top_ambiguous": float(ambiguous[top].mean()),
        "all_ambiguous": float(ambiguous.mean()),
    }
