"""The markdown tables of benchmarks/step_attribution.py's and engine_overhead.py's results (used by
scripts/tables.py for docs/performance.md)."""

from __future__ import annotations

from typing import Any

from eakd.study import code_label


def _spread(x: dict[str, float], scale: float = 100.0, digits: int = 2) -> str:
    """``median (min-max)`` of a {median, min, max} dict, times ``scale`` (``min to max`` when min < 0)."""
    sep = " to " if x["min"] < 0 else "-"
    return (
        f"{scale * x['median']:.{digits}f} ({scale * x['min']:.{digits}f}{sep}{scale * x['max']:.{digits}f})"
    )


def _measured(result: dict[str, Any], clock: str) -> str:
    p = result.get("provenance", {})
    m = p.get("machine", {})
    start, end = result["loadavg_start"][0], result["loadavg_end"][0]
    return (
        f"_Measured {p.get('date', '?')} on {m.get('device', '?')} ({m.get('cpus', '?')} CPU cores, "
        f"{result['threads']} torch thread(s)), torch {m.get('torch', '?')}, code "
        f"{code_label(p)}; "
        f"{clock}; load average {start:.2f} at the start, {end:.2f} at the end._"
    )


def _fused_note(cases: dict[str, Any]) -> str | None:
    """The note on the fused cases' EA time (a difference of kernel times), with the kernels' medians."""
    parts = [
        f"{name} {c['fused_ea_cpu_ms']['median']:.1f} ms with EA, {c['fused_none_cpu_ms']['median']:.1f} ms "
        f"unweighted (`eakd.weights` {c['weights_cpu_ms']['median']:.2f} ms)"
        for name, c in cases.items()
        if "fused_ea_cpu_ms" in c
    ]
    if not parts:
        return None
    return (
        "\\* Fused cases (`fused: true`): the entropies are computed inside the compiled loss kernel, so "
        "EA ms = the `eakd.weights` operations + the fused loss's self time (forward and backward) in the "
        "EA step minus that in an unweighted step of the same model, batch and optimiser, profiled in "
        "interleaved pairs: a difference of kernel times, not of whole steps, and as noisy as the two "
        "kernels. EA ms and the share's median come from the difference of the two kernels' medians, the "
        f"share's min-max from the pairs. Fused loss medians: {'; '.join(parts)}."
    )


def _attribution_clock(run: dict[str, Any], fused: bool) -> str:
    amp = f", autocast {run['amp']}" if run.get("amp") else ""
    steps = f"{run['steps']} profiled steps after {run['warmup']} warm-up steps"
    if fused:
        steps = (
            f"{run['steps']} profiled steps (fused cases: pairs of an EA and an unweighted step) after "
            f"{run['warmup']} warm-up steps (of each weighting)"
        )
    return (
        f"{run['device']}{amp}; self CPU time of the profiled operations (time on their thread), median "
        f"(min-max) of {steps}"
    )


def step_attribution_table(result: dict[str, Any]) -> str:
    """One row per case: EA's and the step's self CPU time (medians), EA's share median (min-max) over the
    profiled steps, and on a GPU EA's share of the kernel time; a note on the fused cases; then the
    provenance of each run (cases merged from another run carry their own ``run``)."""
    cases = result["cases"]
    device = any("device_fraction" in c for c in cases.values())
    head = "| case | step | EA ms | step ms | EA share % | target % |"
    rule = "|---|---|---|---|---|---|"
    if device:
        head += " EA share of kernel time % |"
        rule += "---|"
    lines = [head, rule]
    for name, c in cases.items():
        ea = f"{c['ea_cpu_ms']['median']:.2f}" + ("\\*" if "fused_ea_cpu_ms" in c else "")
        row = (
            f"| {name} | {c['what']} | {ea} | {c['step_cpu_ms']['median']:.0f} | "
            f"{_spread(c['cpu_fraction'], digits=3)} | <= {100 * c['target']:.0f} |"
        )
        if device:
            row += f" {_spread(c['device_fraction'], digits=3) if 'device_fraction' in c else '-'} |"
        lines.append(row)
    note = _fused_note(cases)
    runs: list[tuple[dict[str, Any], list[str]]] = []  # each run and its cases, in the table's order
    for name, c in cases.items():
        run = c.get("run", result)
        for known, names in runs:
            if known == run:
                names.append(name)
                break
        else:
            runs.append((run, [name]))
    measured = []
    for run, names in runs:
        fused = any("fused_ea_cpu_ms" in cases[n] for n in names)
        line = _measured(run, _attribution_clock(run, fused))
        measured.append(line if len(runs) == 1 else f"{', '.join(names)}: {line}")
    return "\n".join([*lines, "", *([note, ""] if note else []), "\n\n".join(measured)])


def engine_overhead_table(result: dict[str, Any]) -> str:
    """One row per contender: images/s by process CPU time and by wall time (medians), and the images/s
    relative to the minimal loop, median (min-max) of the paired repeats; then the setup and provenance."""
    lines = [
        "| contender | images/s (CPU time) | images/s (wall) | relative to the minimal loop (CPU time) "
        "| relative (wall) |",
        "|---|---|---|---|---|",
    ]
    for name, c in result["contenders"].items():
        rel = ("1", "1")
        if "ratio_cpu" in c:
            rel = tuple(_spread(c[f"ratio_{k}"], scale=1.0, digits=3) for k in ("cpu", "wall"))
        lines.append(
            f"| {name} | {c['images_per_s_cpu']:.1f} | {c['images_per_s_wall']:.1f} | {rel[0]} | {rel[1]} |"
        )
    clock = (
        f"{result['setup']}; {result['repeats']} interleaved repeats of one epoch each; target: the engine "
        f">= {result['target']:.2f} of the minimal loop's images/s"
    )
    return "\n".join([*lines, "", _measured(result, clock)])
