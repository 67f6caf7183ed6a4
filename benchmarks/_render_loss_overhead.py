"""The markdown table of benchmarks/loss_overhead.py's results (used by it and by scripts/tables.py)."""

from __future__ import annotations

from typing import Any

from eakd.study import code_label

COLUMNS = ("eager_none", "eager_ea", "fused_none", "fused_ea")


def render(result: dict[str, Any]) -> str:
    """One row per (loss, shape, tau): ms of each variant, the default's (``fused="auto"``) with the path
    it takes, the four ratios, the exp passes over the (N, K) logits per variant, forward + backward
    (unweighted eager / EA eager / unweighted fused / EA fused); then the provenance when there is one."""
    lines = [
        "| loss | shape | T | tau | unweighted ms | EA ms | fused unweighted ms | fused EA ms "
        "| default EA ms | EA / unweighted | fused EA / unweighted | fused EA / fused unweighted "
        "| default EA / EA | exp passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ms, passes = r["ms"], r["exp_passes"]
        lines.append(
            f"| {r['method']} | ({r['n']}, {r['k']}) | {r['temperature']:g} | {r['tau']:g} | "
            + " | ".join(f"{ms[c]:.2f}" for c in COLUMNS)
            + f" | {ms['auto_ea']:.2f} ({r['auto']}) | {r['ea_over_none_eager']:.2f} | "
            f"{r['fused_ea_over_eager_none']:.2f} | {r['fused_ea_over_fused_none']:.2f} | "
            f"{r['default_ea_over_eager_ea']:.2f} | {' / '.join(str(passes[c]) for c in COLUMNS)} |"
        )
    p = result.get("provenance")
    if p:
        m, s = p.get("machine", {}), result.get("settings", {})
        lines += [
            "",
            f"_Measured {p.get('date', '?')} on {m.get('device', '?')} ({m.get('cpus', '?')} CPU cores, "
            f"{s.get('threads', '?')} threads, {s.get('dtype', '?')}), torch {m.get('torch', '?')}, code "
            f"{code_label(p)}; median {s.get('clock', 'wall')} time of interleaved "
            f"repeats; load average {result['load_start'][0]:.2f} at start, {result['load_end'][0]:.2f} at "
            "the end._",
        ]
    return "\n".join(lines)
