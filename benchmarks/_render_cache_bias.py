"""The markdown of benchmarks/llm_cache_bias.py's results (used by scripts/tables.py): the gradients of each
cache against the online teacher's, the students after a short distillation, and which cache to choose
at each size, read off the measurement."""

from __future__ import annotations

import statistics
from typing import Any

from eakd.study import code_label


def _label(name: str, c: dict[str, int]) -> str:
    if not c["drawn"]:
        return f"top-{c['k']}"
    exact = c["k"] - c["drawn"]
    return f"sampled {c['k']}" + (f" (top {exact} exact)" if exact else "")


def render(result: dict[str, Any]) -> str:
    proto, grads, dist = result["protocol"], result["gradients"], result["distillation"]
    lines = [
        "| cache | bytes / token | mass kept exactly | cosine per step (mean, min) | relative error per step "
        "(mean) | cosine of the summed gradient | relative error of the summed gradient |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, g in grads.items():
        c = proto["caches"][name]
        cos = [s["cosine"] for s in g["per_step"]]
        err = statistics.mean(s["rel_error"] for s in g["per_step"])
        kept = max(g["exact_mass_mean"], 0.0)  # -0.0 when nothing is kept exactly
        lines.append(
            f"| {_label(name, c)} | {proto['bytes_per_token'][name]} | {kept:.3f} | "
            f"{statistics.mean(cos):.4f}, {min(cos):.4f} | {err:.3f} | {g['summed']['cosine']:.4f} | "
            f"{g['summed']['rel_error']:.3f} |"
        )
    lines += ["", "| student | KL(teacher ‖ student) | ECE | perplexity |", "|---|---|---|---|"]
    names = {"start": "before distillation", "online": "teacher online"}
    for name, r in dist.items():
        label = names.get(name) or _label(name, proto["caches"][name])
        lines.append(f"| {label} | {r['kl']:.3f} | {r['ece']:.3f} | {r['perplexity']:.4g} |")
    lines += ["", verdict(result), "", provenance(result)]
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> str:
    """Per size k: the cache whose summed gradient is closest to the online one (the bias that training
    accumulates), and the one closest per step; then the distilled student closest to the online one."""
    proto, grads = result["protocol"], result["gradients"]
    parts = []
    for k in sorted({c["k"] for c in proto["caches"].values()}):
        names = [n for n, c in proto["caches"].items() if c["k"] == k]
        summed = min(names, key=lambda n: grads[n]["summed"]["rel_error"])
        step = min(names, key=lambda n: statistics.mean(s["rel_error"] for s in grads[n]["per_step"]))
        best, one = _label(summed, proto["caches"][summed]), _label(step, proto["caches"][step])
        parts.append(
            f"at k = {k} the summed gradient is closest to the online teacher's with {best}, "
            f"a step's with {one}"
        )
    dist = result["distillation"]
    trained = [n for n in dist if n not in ("start", "online")]
    near = min(trained, key=lambda n: abs(dist[n]["kl"] - dist["online"]["kl"]))
    parts.append(
        f"after the distillation the student closest to the online-trained one in KL to the teacher is "
        f"{_label(near, proto['caches'][near])}'s"
    )
    return "Read off the tables: " + "; ".join(parts) + "."


def provenance(result: dict[str, Any]) -> str:
    p, proto = result["provenance"], result["protocol"]
    m = p.get("machine", {})
    return (
        f"_Measured {p.get('date', '?')} on {m.get('cpus', '?')} CPU cores "
        f"({result['torch_threads']} thread), "
        f"code {code_label(p)}: teacher {proto['teacher']}, {proto['student_layers']}-layer student, "
        f"{proto['steps']} steps over {proto['batches']} batches of {proto['batch_size']} rows "
        f"({proto['train_tokens']} labelled tokens, V = {proto['vocab_size']}), {proto['settings']}; "
        f"{proto['val_pairs']} validation pairs, ECE over {proto['ece_bins']} bins; "
        f"{result['wall_s'] / 60:.0f} min._"
    )
