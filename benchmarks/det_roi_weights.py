"""Which RoIs does EA weight up in the detection study? Summarises the per-RoI logs of its EA arms.

    python benchmarks/det_roi_weights.py [--runs runs/det_scenes] [--arms ea-kd ea-feat]

Reads ``RUNS/<arm>-seed<k>/roi_weights.csv`` of every finished seed (``eakd.detection.roi_log``: every
25th training step, 64 evenly spaced sampled RoIs with their weight, IoU with the ground truth and the
teacher's max probability) and writes results/det_roi_weights.json: per arm, ``eakd.detection.roi_summary``
of all logged steps pooled over the seeds and of the last epoch alone, and each seed's two rank
correlations. docs/studies.md's table: ``python scripts/tables.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from eakd.detection.roi_log import FILE
from eakd.detection.roi_summary import AMBIGUOUS, summarise
from eakd.engine.files import atomic_write_text
from eakd.engine.logs import read_csv
from eakd.study import provenance

RESULTS = Path("results/det_roi_weights.json")


def arm_summary(runs: Path, arm: str) -> dict[str, Any] | None:
    """The summaries of ``arm``'s seeds under ``runs`` (None when no seed logged a row)."""
    seeds = {}
    for folder in sorted(runs.glob(f"{arm}-seed*")):
        rows = read_csv(folder / FILE)
        if rows and (folder / "summary.json").is_file():  # finished runs only
            seeds[folder.name.removeprefix(f"{arm}-seed")] = rows
    if not seeds:
        return None
    pooled = [r for rows in seeds.values() for r in rows]
    end = max(float(r["epoch"]) for r in pooled)
    final = [r for r in pooled if float(r["epoch"]) > end - 1]  # the last epoch's steps
    per_seed = {s: summarise(rows) for s, rows in seeds.items()}
    return {
        "seeds": sorted(seeds, key=int),
        "all": summarise(pooled),
        "last_epoch": summarise(final),
        "per_seed": {
            s: {k: v[k] for k in ("n", "spearman_iou", "spearman_confidence")} for s, v in per_seed.items()
        },
    }


def table(result: dict[str, Any]) -> str:
    """Markdown: per arm and span, the rank correlations, the mean relative weight by IoU band and by the
    teacher's confidence, and the ambiguous share of the top-weighted RoIs against all RoIs."""
    arms = result["arms"]
    first = next(iter(arms.values()))["all"]
    iou_bands, conf_bands = list(first["iou"]), list(first["confidence"])
    lines = [
        "| arm | RoIs | rho(w, IoU) | rho(w, p_max) | "
        + " | ".join(f"w at IoU {b}" for b in iou_bands)
        + " | "
        + " | ".join(f"w at p_max {b}" for b in conf_bands)
        + f" | ambiguous (IoU {AMBIGUOUS[0]:g}-{AMBIGUOUS[1]:g}): top 10 % / all |",
        "|---|---|---|---|" + "---|" * (len(iou_bands) + len(conf_bands) + 1),
    ]
    for arm, s in arms.items():
        for span, label in (("all", "all steps"), ("last_epoch", "last epoch")):
            m = s[span]
            cells = [f"{m['iou'][b]['weight']:.2f}" for b in iou_bands]
            cells += [f"{m['confidence'][b]['weight']:.2f}" for b in conf_bands]
            lines.append(
                f"| {arm} ({label}, seeds {','.join(s['seeds'])}) | {m['n']} | {m['spearman_iou']:+.2f} | "
                f"{m['spearman_confidence']:+.2f} | {' | '.join(cells)} | "
                f"{m['top_ambiguous']:.0%} / {m['all_ambiguous']:.0%} |"
            )
    shares = "; ".join(f"IoU {b} {first['iou'][b]['share']:.0%}" for b in iou_bands)  # first arm, all steps
    per_seed = "; ".join(
        f"{arm}: " + ", ".join(f"{v['spearman_iou']:+.2f}" for v in s["per_seed"].values())
        for arm, s in arms.items()
    )
    return "\n".join(
        [*lines, "", f"RoIs per IoU band ({next(iter(arms))}, all steps): {shares}.",
         f"rho(w, IoU) per seed: {per_seed}."]
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path("runs/det_scenes"), help="the study's output folder")
    p.add_argument("--arms", nargs="+", default=["ea-kd", "ea-feat"], help="arms with EA's weights")
    a = p.parse_args()
    arms = {arm: s for arm in a.arms if (s := arm_summary(a.runs, arm)) is not None}
    if not arms:
        raise SystemExit(f"error: no finished run of {a.arms} with {FILE} under {a.runs}")
    study = Path("results/det_scenes.json")
    runs_code = json.loads(study.read_text())["provenance"]["code"] if study.is_file() else None
    result = {"arms": arms, "runs_code": runs_code, "provenance": provenance()}
    atomic_write_text(RESULTS, json.dumps(result, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
