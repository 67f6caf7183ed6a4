"""The report of a study folder (``eakd study``, ``eakd report STUDY_DIR``): report.md and differences.png
from its study.json (``eakd.study.run_study``'s result).

report.md: the arms' mean ± std over seeds (``eakd.study.study_table``), then each arm minus its reference
paired by seed: the mean difference, its 95 % t-interval (``eakd.stats.paired_interval``), a verdict and,
when the study names an effect, the paired seeds its measured spread needs to find a difference that size
(``eakd.stats.seeds_needed``). The result's "report" entry says which metric, reference and effect (all
optional: the task's main metric, the first arm, none).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from eakd.plots import pyplot, save
from eakd.stats import seeds_needed
from eakd.study import code_label, higher_is_better, paired_gain, study_table, values, verdict


def is_study_dir(path: Path) -> bool:
    """Whether ``path`` is a study folder (holds a study.json)."""
    return (path / "study.json").is_file()


def main_metric(result: dict[str, Any]) -> str:
    """The metric a study is judged on when it names none: the task's main metric (the one with a
    ``best_`` value, ``eakd.config_study.run_metrics``), else the first metric of a run."""
    for runs in result["runs"].values():
        for m in runs.values():
            best = [k.removeprefix("best_") for k in m if k.startswith("best_")]
            return best[0] if best else next(iter(m))
    raise ValueError("the study has no finished run yet: nothing to report")


def columns(result: dict[str, Any], metric: str) -> dict[str, str]:
    """Result keys -> labels of the report's columns: the metric after the last evaluation (the primary:
    no selection), at the best evaluation (selected on the eval set), the training time."""
    present = {k for runs in result["runs"].values() for m in runs.values() for k in m}
    if f"last_{metric}" not in present:
        if metric not in present:
            raise ValueError(f"no run of the study has the metric {metric!r}; they have {sorted(present)}")
        return {metric: metric, **({"train_s": "train s/run"} if "train_s" in present else {})}
    wanted = {
        f"last_{metric}": f"last {metric}",
        f"best_{metric}": f"best {metric} (selected on the eval set)",
        "train_s": "train s/run",
    }
    return {k: v for k, v in wanted.items() if k in present}


def references(result: dict[str, Any], reference: str | dict[str, str]) -> dict[str, str]:
    """arm -> the arm it is compared with, for the arms other than their reference."""
    refs = reference if isinstance(reference, dict) else dict.fromkeys(result["arms"], reference)
    return {a: r for a, r in refs.items() if a != r and {a, r} <= set(result["arms"])}


def differences_table(
    result: dict[str, Any], key: str, label: str, reference: str | dict[str, str], effect: float | None
) -> str:
    """Markdown: each arm minus its reference in ``key`` paired by seed, its 95 % interval and verdict;
    with ``effect``, the spread of the paired differences and the seeds it needs (``seeds_needed``)."""
    head = f"| arm - reference | paired seeds | {label} difference | 95 % CI | verdict |"
    if effect is not None:
        head += f" sd of differences | seeds to find ±{effect:g} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for arm, ref in references(result, reference).items():
        mean, half, n = paired_gain(result, arm, ref, key)
        ci = f"[{mean - half:+.2f}, {mean + half:+.2f}]" if n > 1 else "-"
        shown = verdict(mean, half, higher_is_better(key)) if n else "pending"
        row = f"| {arm} - {ref} | {n} | {mean:+.2f} | {ci} | {shown} |"
        if n == 0:
            row = f"| {arm} - {ref} | 0 | - | - | pending |"
        if effect is not None:
            own, other = values(result, arm, key), values(result, ref, key)
            diffs = [own[s] - other[s] for s in sorted(set(own) & set(other))]
            sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
            need = seeds_needed(sd, effect) if len(diffs) > 1 else "-"
            row += f" {sd:.2f} | {need} |" if len(diffs) > 1 else " - | - |"
        lines.append(row)
    return "\n".join(lines)


def plot_differences(
    result: dict[str, Any], key: str, label: str, reference: str | dict[str, str], path: Path
) -> bool:
    """differences.png: per compared arm, each seed's arm - reference (dots, seeds left to right) and the
    mean with its 95 % interval (bar); False when no arm has a pair yet."""
    pairs = []
    for arm, ref in references(result, reference).items():
        own, other = values(result, arm, key), values(result, ref, key)
        diffs = [own[s] - other[s] for s in sorted(set(own) & set(other))]
        if diffs:
            pairs.append((f"{arm}\n- {ref}", diffs, paired_gain(result, arm, ref, key)))
    if not pairs:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(pairs), 4))
    for i, (_, diffs, (mean, half, n)) in enumerate(pairs):
        spread = [i - 0.15 + 0.3 * j / max(len(diffs) - 1, 1) for j in range(len(diffs))]
        ax.scatter(spread, diffs, s=14, color="tab:blue", alpha=0.7, label="one seed" if i == 0 else None)
        if n > 1:
            ax.errorbar([i + 0.3], [mean], yerr=[[half], [half]], fmt="o", color="black", capsize=4,
                        label="mean, 95 % CI" if i == 0 else None)  # fmt: skip
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(pairs)), [p[0] for p in pairs], fontsize=8)
    ax.set(ylabel=f"{label}: arm - reference", title="paired differences per seed")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save(fig, path)
    return True


def report_spec(result: dict[str, Any]) -> tuple[dict[str, str], str | dict[str, str], float | None]:
    """(the report's ``columns``, the first the primary metric; the reference arm, or arm -> its reference;
    the effect or None) from the result's "report" entry, defaults filled in."""
    spec = result.get("report", {})
    cols = columns(result, spec.get("metric") or main_metric(result))
    return cols, spec.get("reference") or result["arms"][0], spec.get("effect")


def report_tables(result: dict[str, Any]) -> str:
    """The report's two tables: the arms' mean ± std over seeds (with each seed's value of the primary
    metric), then each arm minus its reference paired by seed with its interval and verdict."""
    cols, reference, effect = report_spec(result)
    key, label = next(iter(cols.items()))
    return (
        f"{study_table(result, cols)}\n\n{differences_table(result, key, label, reference, effect)}\n\n"
        "verdict: better / worse when the 95 % interval of the paired differences excludes 0, else no "
        f"difference shown ({'higher' if higher_is_better(key) else 'lower'} is better)"
        + (
            f"; seeds to find ±{effect:g}: for a two-sided paired t-test at 5 % to find a true difference "
            "that size with 80 % power, at the measured sd of the differences"
            if effect is not None
            else ""
        )
    )


def study_report(result: dict[str, Any], plot: str | None = None) -> str:
    """report.md's text for a study result (``plot``: the differences plot's file name, if drawn)."""
    prov, minutes = result.get("provenance", {}), result.get("wall_s", 0.0) / 60
    lines = [
        f"# Study: {', '.join(result['arms'])}",
        "",
        f"{len(result['seeds'])} seeds ({', '.join(map(str, result['seeds']))}), paired across arms; "
        f"{prov.get('date', '?')}, code {code_label(prov)}, {minutes:.1f} min of runs.",
        "",
        report_tables(result),
    ]
    if plot is not None:
        lines += ["", f"![paired differences per seed]({plot})"]
    return "\n".join(lines) + "\n"


def write_study_report(folder: str | Path) -> Path:
    """Write report.md and differences.png into the study folder ``folder``; returns report.md's path."""
    folder = Path(folder)
    result = json.loads((folder / "study.json").read_text())
    cols, reference, _ = report_spec(result)
    key, label = next(iter(cols.items()))
    drawn = plot_differences(result, key, label, reference, folder / "differences.png")
    path = folder / "report.md"
    path.write_text(study_report(result, "differences.png" if drawn else None))
    return path
