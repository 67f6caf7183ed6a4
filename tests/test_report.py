"""``eakd report`` writes its plots and report.md from a run folder (a tiny real run of the engine)."""

import sys
from pathlib import Path

from eakd.cli import main
from eakd.engine.loop import train

sys.path.insert(0, str(Path(__file__).parent))
from test_engine_trainer import toy_config, toy_task


def test_report_writes_its_files(tmp_path, capsys):
    runs = []
    for weighting in ("ea", "none"):
        cfg = toy_config(
            tmp_path, f"experiment.name={weighting}", f"distill.weighting={weighting}", "train.epochs=2"
        )
        train(cfg, toy_task(cfg))
        runs.append(cfg.run_dir)
    assert main(["report", *map(str, runs)]) == 0
    for name in ("report.md", "curves.png", "weights.png", "weight_hist.png", "entropy_scatter.png"):
        assert (runs[0] / name).stat().st_size > 0, name
    text = (runs[0] / "report.md").read_text()
    assert "best top1" in text and "![Learning curves](curves.png)" in text and "ess" in text
    assert (runs[1] / "curves.png").is_file() and not (runs[1] / "weight_hist.png").exists()  # no weights
    out = capsys.readouterr().out
    assert "| ea | kd | ea |" in out and "| none | kd | none |" in out
