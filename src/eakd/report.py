"""``eakd report RUN_DIR [RUN_DIR ...]``: PNG plots and a markdown summary (report.md) for training runs
(a study folder, ``eakd study``'s, gets its study report: ``eakd.study_report``).

Reads what the engine writes in a run folder (metrics.csv, diagnostics.csv, diagnostics/samples-*.npz,
summary.json, config.yaml), or an LLM run's folder (``eakd llm train``'s train.output_dir: the same CSV
and sample files, and results.json), and writes, into the same folder:

- curves.png: training loss terms, evaluation metrics and learning rate per epoch,
- weights.png: weight quantiles, effective sample size and corr(w, loss) over optimiser steps,
- weight_hist.png: histograms of the per-sample weights at up to 6 epochs,
- entropy_scatter.png: teacher vs student entropy of the last epoch's samples, coloured by weight,
- roi_weights.png (detection runs with roi_weights.csv): per-RoI weight against the RoI's IoU with its
  ground truth and against the teacher's confidence, with binned means,
- report.md: the numbers and the plots.

With several runs it also prints one markdown table comparing them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from eakd.args import ArgumentParser
from eakd.engine.logs import read_csv
from eakd.plots import pyplot, save

PLOTS = ("curves.png", "weights.png", "weight_hist.png", "entropy_scatter.png", "roi_weights.png")


def _column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    """A CSV column as floats, NaN where empty."""
    return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])


def read_numbers(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a run's CSV log (``read_csv``; [] when missing), every value a number or empty and the
    ``required`` columns present; anything else is a ValueError naming the file, never a report of NaN."""
    fix = "it is not a log written by eakd; remove it or give the run's own folder"
    try:
        rows = read_csv(path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path} cannot be read as CSV ({err}); {fix}") from None
    missing = [k for k in required if rows and k not in rows[0]]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}; {fix}")
    for n, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise ValueError(f"{path} line {n} has another number of fields than the header; {fix}")
        for key, value in row.items():
            try:
                float(value or "nan")
            except ValueError:
                raise ValueError(f"{path} line {n}: {key}={value!r} is not a number; {fix}") from None
    return rows


def sample_files(run_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the run's raw diagnostic samples, by epoch."""
    folder = run_dir / "diagnostics"
    found = (
        [(int(p.stem.split("-e")[-1]), p) for p in folder.glob("samples-e*.npz")] if folder.is_dir() else []
    )
    return sorted(found)


def _legends_and_grids(axes: Any) -> None:
    """A legend on each axis that has labelled lines, and a light grid on all."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)


def plot_curves(rows: list[dict[str, str]], path: Path) -> None:
    """Loss terms, eval metrics (percent metrics on their own axis) and lr against the epoch."""
    plt = pyplot()
    epoch = _column(rows, "epoch")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in rows[0]:
        if key.startswith("train_loss"):  # not train_time_s
            axes[0].plot(epoch, _column(rows, key), label=key.removeprefix("train_"))
        elif key.startswith(("eval_", "best_")) and not key.endswith("loss"):
            axes[1].plot(
                epoch, _column(rows, key), label=key, linestyle="--" if key.startswith("best_") else "-"
            )
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title="evaluation", xlabel="epoch")
    axes[2].plot(epoch, _column(rows, "lr"))
    axes[2].set(title="learning rate", xlabel="epoch")
    _legends_and_grids(axes[:2])
    save(fig, path)


def plot_weight_stats(rows: list[dict[str, str]], path: Path) -> None:
    """w quantile bands (5-95, 25-75, median), ESS and corr(w, loss) against the optimiser step."""
    plt = pyplot()
    step = _column(rows, "step")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for prefix, ax, title in (("w", axes[0], "weight w"), ("h_t", axes[1], "entropies (nats)")):
        if f"{prefix}_q50" not in rows[0]:
            continue
        ax.fill_between(step, _column(rows, f"{prefix}_q05"), _column(rows, f"{prefix}_q95"), alpha=0.2)
        ax.fill_between(step, _column(rows, f"{prefix}_q25"), _column(rows, f"{prefix}_q75"), alpha=0.3)
        ax.plot(step, _column(rows, f"{prefix}_q50"), label=f"{prefix} median")
        ax.set(title=title, xlabel="step")
    if "h_s_q50" in rows[0]:
        axes[1].plot(step, _column(rows, "h_s_q50"), label="h_s median")
    for key in ("ess", "corr_w_loss"):
        if key in rows[0]:
            axes[2].plot(step, _column(rows, key), label=key)
    axes[2].set(title="ESS and corr(w, per-sample loss)", xlabel="step")
    _legends_and_grids(axes)
    save(fig, path)


def plot_weight_histograms(files: list[tuple[int, Path]], path: Path) -> bool:
    """Overlaid weight histograms of up to 6 evenly spaced epochs; False if no file holds weights."""
    picked = [
        files[i] for i in sorted({round(x) for x in np.linspace(0, len(files) - 1, min(6, len(files)))})
    ]
    data = [(epoch, np.load(p)) for epoch, p in picked]
    data = [(epoch, d["weights"]) for epoch, d in data if "weights" in d.files]
    if not data:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.get_cmap("viridis")(np.linspace(0, 1, len(data)))
    hi = max(float(w.max()) for _, w in data)
    bins = np.linspace(0.0, hi if hi > 0 else 1.0, 40)
    for (epoch, w), color in zip(data, colors, strict=True):
        ax.hist(w, bins=bins, histtype="step", density=True, color=color, label=f"epoch {epoch}")
    ax.set(title="per-sample weights over training", xlabel="w", ylabel="density")
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def plot_entropy_scatter(file: Path, path: Path) -> bool:
    """H_t vs H_s of one epoch's samples coloured by w; False without those arrays."""
    d = np.load(file)
    if not {"h_t", "h_s", "weights"} <= set(d.files):
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(d["h_t"], d["h_s"], c=d["weights"], s=6, cmap="viridis", alpha=0.7)
    fig.colorbar(points, ax=ax, label="w")
    ax.set(title=f"entropies, {file.stem}", xlabel="H_t (teacher, nats)", ylabel="H_s (student, nats)")
    save(fig, path)
    return True


def _binned_means(x: np.ndarray, y: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, mean of y per bin of x) over the bins holding points."""
    which = np.clip(np.digitize(x, bins) - 1, 0, len(bins) - 2)
    full = [b for b in range(len(bins) - 1) if np.any(which == b)]
    centres = np.array([(bins[b] + bins[b + 1]) / 2 for b in full])
    return centres, np.array([y[which == b].mean() for b in full])


def plot_roi_weights(rows: list[dict[str, str]], path: Path) -> bool:
    """A detection run's per-RoI weights (``roi_weights.csv``, eakd.detection.roi_log) against the RoI's
    IoU with its ground truth and against the teacher's max probability; points coloured by background (RoI
    label 0) or object, with the mean weight per 0.1-wide bin. False without rows."""
    if not rows:
        return False
    plt = pyplot()
    w, label = _column(rows, "weight"), _column(rows, "label")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.linspace(0.0, 1.0, 11)
    for ax, key, title in (
        (axes[0], "iou", "IoU with the closest ground-truth box"),
        (axes[1], "teacher_maxprob", "teacher's max class probability (T = 1)"),
    ):
        x = _column(rows, key)
        for name, mask, color in (
            ("background RoIs", label == 0, "tab:gray"),
            ("object RoIs", label > 0, "tab:blue"),
        ):
            ax.scatter(x[mask], w[mask], s=5, alpha=0.35, color=color, label=name)
        centres, means = _binned_means(x, w, bins)
        ax.plot(centres, means, "o-", color="tab:red", label="mean weight per bin")
        ax.set(xlabel=title, ylabel="weight w", xlim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"per-RoI weights ({len(rows)} sampled RoIs)")
    save(fig, path)
    return True


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _llm_results(run_dir: Path) -> dict[str, Any]:
    """An LLM run's results.json (``eakd.llm.run``), or {} for other runs."""
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def summary_row(run_dir: Path) -> dict[str, Any]:
    """One run's headline numbers: name, method, weighting, best (epoch), last, steps, time, throughput;
    for an LLM run: name, divergence, weighting, the student's ROUGE-L and perplexity, steps, time."""
    llm = _llm_results(run_dir)
    if llm:
        train = llm["config"]["train"]
        return {
            "run": run_dir.name,
            "method": train.get("divergence", "fkl"),
            "weighting": train.get("weighting", "ea"),
            "rougeL": llm["student"]["rougeL"],
            "perplexity": llm["student"]["perplexity"],
            "steps": max((h.get("step", 0) for h in llm.get("log_history", [])), default="?"),
            "train time (s)": llm["train_seconds"],
        }
    summary = (
        json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    )
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    distill = cfg.get("distill", {})
    best = summary.get("best", {})
    metric = summary.get("metric", best.get("metric", "?"))
    return {
        "run": run_dir.name,
        "method": distill.get("method", "?"),
        "weighting": distill.get("weighting", "?"),
        f"best {metric}": best.get("value", float("nan")),
        "best epoch": best.get("epoch", "?"),
        f"last {metric}": summary.get("last", {}).get("metrics", {}).get(metric, float("nan")),
        "steps": summary.get("steps", "?"),
        "train time (s)": summary.get("train_time_s", float("nan")),
        "samples/s": summary.get("samples_per_s", float("nan")),
    }


def setting_lines(run_dir: Path) -> list[str]:
    """The report's "Setting" section: the config's sections, one line each ([] without a config)."""
    llm = _llm_results(run_dir)
    if llm:
        cfg, sections = llm["config"], ("model", "data", "eval", "train")
    elif (run_dir / "config.yaml").is_file():
        cfg, sections = (
            yaml.safe_load((run_dir / "config.yaml").read_text()),
            ("model", "distill", "optim", "schedule"),
        )
    else:
        return []
    lines = ["## Setting", ""]
    for section in sections:
        items = ", ".join(f"{k}={v}" for k, v in cfg.get(section, {}).items() if v not in (None, {}, []))
        lines.append(f"- **{section}**: {items}")
    if not llm:
        t = cfg.get("train", {})
        lines.append(
            f"- **train**: epochs={t.get('epochs')}, batch_size={t.get('batch_size')}, "
            f"grad_accum={t.get('grad_accum')}, mixed_precision={t.get('mixed_precision')}"
        )
    return [*lines, ""]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of equal keys as a markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_num(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Write the plots and report.md into ``run_dir``; returns the report's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if not any((run_dir / name).is_file() for name in ("metrics.csv", "summary.json", "results.json")):
        raise FileNotFoundError(
            f"{run_dir} holds no run (no metrics.csv, summary.json or results.json): give the folder of one "
            "run, experiment.output_dir/experiment.name (eakd train) or train.output_dir (eakd llm train)"
        )
    metrics = read_numbers(run_dir / "metrics.csv", ("epoch", "lr"))
    diag = read_numbers(run_dir / "diagnostics.csv", ("step",))
    files = sample_files(run_dir)
    made = []
    if metrics:
        plot_curves(metrics, run_dir / "curves.png")
        made.append(("Learning curves", "curves.png"))
    if diag:
        plot_weight_stats(diag, run_dir / "weights.png")
        made.append(("Weights and entropies over training", "weights.png"))
    if files and plot_weight_histograms(files, run_dir / "weight_hist.png"):
        made.append(("Weight histograms", "weight_hist.png"))
    if files and plot_entropy_scatter(files[-1][1], run_dir / "entropy_scatter.png"):
        made.append(("Teacher vs student entropy, coloured by weight", "entropy_scatter.png"))
    if plot_roi_weights(read_csv(run_dir / "roi_weights.csv"), run_dir / "roi_weights.png"):
        made.append(("Per-RoI weight against IoU and teacher confidence", "roi_weights.png"))

    lines = [f"# Run report: {run_dir.name}", "", markdown_table([summary_row(run_dir)]), ""]
    lines += setting_lines(run_dir)
    if diag:
        last = diag[-1]
        keys = [
            k for k in ("w_q05", "w_q50", "w_q95", "ess", "corr_w_loss", "h_t_q50", "h_s_q50") if k in last
        ]
        lines += [f"## Weight diagnostics (last window, step {last['step']})", ""]
        lines += [markdown_table([{k: float(last[k]) if last[k] else float("nan") for k in keys}]), ""]
    for title, name in made:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def report_command(argv: list[str]) -> int:
    """``eakd report RUN_DIR|STUDY_DIR ...``: write each run's report, compare the runs when several; a
    study folder (``eakd study``'s, with a study.json) gets its study report (``eakd.study_report``)."""
    from eakd.study_report import is_study_dir, write_study_report

    parser = ArgumentParser(
        prog="eakd report", description="Plots and report.md for training runs and study folders."
    )
    parser.add_argument(
        "runs", nargs="+", help="run folders (experiment.output_dir/experiment.name) or study folders"
    )
    args = parser.parse_args(argv)
    runs = [r for r in args.runs if not is_study_dir(Path(r))]
    for folder in args.runs:
        print(f"wrote {write_study_report(folder) if folder not in runs else write_report(folder)}")
    if len(runs) > 1:
        print(markdown_table([summary_row(Path(r)) for r in runs]))
    return 0
