"""The result tables of the README and docs, generated from the files under results/.

    python scripts/tables.py            # rewrite every table between its markers
    python scripts/tables.py --check    # exit 1 when a table differs from its results file

A table is the text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in README.md or a file
of docs/; NAME is a results file (results/NAME.json), or FILE.VIEW for another view of results/FILE.json,
and ``RENDER[NAME]`` turns it into markdown. No number
in those places is typed by hand: tests/test_tables.py fails when one differs from its file.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eakd.detection.demo import format_table as detection_table
from eakd.engine.catalog import list_configs
from eakd.engine.config import Config, load_config
from eakd.llm.demo import demo_table as llm_demo_table
from eakd.llm.demo import demo_time as llm_demo_time
from eakd.llm.lm_study import pilot_table as llm_lm_pilot_table
from eakd.llm.lm_study import table as llm_lm_table
from eakd.llm.study import table as llm_study_table
from eakd.study import claims_table, code_label, paired_gain, study_table, verdict
from eakd.study_report import report_tables
from eakd.vision.arms import PAPER_CLAIMS, PRIMARY_PAIRS
from eakd.vision.demo import current_runs
from eakd.vision.demo import format_table as vision_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks' render modules (not a package)
from _render_cache_bias import render as llm_cache_bias_table  # noqa: E402
from _render_loss_overhead import render as loss_overhead_table  # noqa: E402
from _render_perf import engine_overhead_table, step_attribution_table  # noqa: E402
from det_roi_weights import table as roi_weights_table  # noqa: E402
from det_scenes_pilots import pilot_table  # noqa: E402
from llm_onpolicy_cost import table as onpolicy_cost_table  # noqa: E402

RESULTS = ROOT / "results"
MARKER = re.compile(r"(<!-- results:([\w.-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def provenance_line(result: dict[str, Any]) -> str:
    """Where the numbers come from: code version, date, machine."""
    p = result.get("provenance", {})
    m = p.get("machine", {})
    seeds = f"{len(result['seeds'])} seeds, " if "seeds" in result else ""
    return (
        f"_Measured {p.get('date', '?')} on {m.get('cpus', '?')} CPU cores ({m.get('device', '?')}), torch "
        f"{m.get('torch', '?')}, code {code_label(p)}; {seeds}{result.get('wall_s', 0) / 60:.0f} min._"
    )


def llm_demo(result: dict[str, Any]) -> str:
    """`make demo-llm`'s before/after table and example responses, then how long it took."""
    return f"{llm_demo_table(result)}\n\n{llm_demo_time(result)}"


def study(render: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
    """A study's table as its demo prints it, followed by its provenance."""
    return lambda result: f"{render(result)}\n\n{provenance_line(result)}"


def det_roi_weights(result: dict[str, Any]) -> str:
    """The detection study's per-RoI weight summary, then which code summarised which runs."""
    p, runs = result["provenance"], code_label({"code": result["runs_code"]})
    made = f"_Summarised {p['date']} by code {code_label(p)} from the study's runs (code {runs})._"
    return f"{roi_weights_table(result)}\n\n{made}"


def fmnist_claims(result: dict[str, Any]) -> str:
    """The paper's findings beside the Fashion-MNIST study's paired differences (last-epoch test top-1);
    superseded arms (``eakd.vision.demo.superseded``) read as pending."""
    return claims_table(current_runs(result), PAPER_CLAIMS, "last_top1", "last top-1 (pp)")


def mlkd_pilot(result: dict[str, Any]) -> str:
    """The MLKD pilot's variants on the validation split: mean ± std over seeds and each seed's value."""
    labels = {"last_top1": "last val top-1 (%)", "best_top1": "best val top-1 (%)", "train_s": "train s/run"}
    c = result["scale"]
    views = {v: c[f"{v}_kd"] + c[f"{v}_cc"] + c[f"{v}_bc"] for v in ("weak", "strong")}
    terms = ", ".join(
        f"{v} view kd {c[f'{v}_kd']:.1f} + cc {c[f'{v}_cc']:.1f} + bc {c[f'{v}_bc']:.1f}" for v in views
    )
    total = sum(views.values())
    scale = (
        f"scale (fresh student, means over 30 batches of 64): teacher top-1 {c['teacher_top1_weak']:.1f} % "
        f"on weak views, {c['teacher_top1_strong']:.1f} % on strong views; MLKD's terms {terms}: "
        f"{total:.1f}, {total / c['kd_t4']:.1f}x plain KD at T 4 ({c['kd_t4']:.2f})"
    )
    return f"{scale}\n\n{study_table(result, labels)}"


def fmnist_summary(result: dict[str, Any]) -> str:
    """One sentence per primary comparison of the Fashion-MNIST study, as the README quotes it."""
    parts = []
    for arm, ref in PRIMARY_PAIRS:
        mean, half, n = paired_gain(current_runs(result), arm, ref, "last_top1")
        if n == 0:
            parts.append(f"{arm} - {ref}: pending")
        else:
            ci = f" [{mean - half:+.2f}, {mean + half:+.2f}]" if n > 1 else ""
            parts.append(f"{arm} - {ref} {mean:+.2f}{ci} over {n} paired seeds: {verdict(mean, half)}")
    return "Last-epoch test top-1 (points), 95 % CI: " + "; ".join(parts) + "."


RECIPE_COLUMNS = {  # column title -> the recipe fields it shows (short names, see recipe())
    "epochs": ["epochs"], "milestones": ["milestones"], "lr": ["lr"], "wd": ["wd"], "batch": ["batch"],
    "warm-up": ["warmup"], "CE / KD": ["ce", "kd"], "T": ["T"], "alpha / beta": ["alpha", "beta"],
    "tau": ["tau"], "H_ub": ["h_ub"],
}  # fmt: skip


def recipe(cfg: Config) -> dict[str, Any]:
    """A CIFAR-100 config's recipe under the short names of results/cifar100_recipes.json (None: not set)."""
    d, h = cfg.distill, cfg.distill.hparams
    ea = d.weighting != "none"
    return {
        "epochs": cfg.train.epochs,
        "milestones": cfg.schedule.milestones,
        "lr": cfg.optim.lr,
        "wd": cfg.optim.weight_decay,
        "batch": cfg.train.batch_size,
        "warmup": d.warmup_epochs,
        "ce": d.ce_weight,
        "kd": d.kd_weight if d.method != "none" else None,
        "T": h.get("temperature", h.get("init_temperature")),
        "alpha": h.get("alpha"),
        "beta": h.get("beta"),
        "tau": d.tau if ea else None,
        "h_ub": (d.h_ub or "ln 100") if ea else None,
    }


def published_recipe(source: dict[str, Any], method: str, pair: str) -> dict[str, Any] | None:
    """What one source publishes for a method and pair; None when it does not cover the method."""
    if method not in source.get("methods", {}):
        return None
    parts = [
        source.get("solver", {}),
        source.get("pairs", {}).get(pair, {}),
        source["methods"][method],
        source.get("method_pairs", {}).get(method, {}).get(pair, {}),
    ]
    return {k: v for part in parts for k, v in part.items()}


def recipe_differences(published: dict[str, Any]) -> dict[str, tuple[list[str], list[tuple[str, str, Any]]]]:
    """Per packaged CIFAR-100 config (``method/pair`` or ``method/pair_authors``): the sources that cover
    its method, and (source, field, published value) wherever ours differs."""
    out = {}
    for name in list_configs("cifar100/*/*"):
        method, pair = name.split("/")[1:]
        if method in ("base", "pairs") or pair == "base":
            continue
        ours = recipe(load_config(name))
        base_pair = pair.removesuffix("_authors")
        refs = {s: published_recipe(src, method, base_pair) for s, src in published.items()}
        refs = {s: ref for s, ref in refs.items() if ref is not None}
        found = [(s, k, v) for s, ref in refs.items() for k, v in ref.items() if ours[k] != v]
        out[name.removeprefix("cifar100/")] = (list(refs), found)
    return out


def _show(v: Any) -> str:
    """A recipe value as a table cell."""
    if v is None:
        return "-"
    if isinstance(v, list):
        return "/".join(f"{x:g}" for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def recipes_table(result: dict[str, Any]) -> str:
    """Our CIFAR-100 configs field by field beside the published recipes: our value, then ``≠ source value``
    for each source that published another (the reasons below the table)."""
    lines = [
        f"| config | checked against | {' | '.join(RECIPE_COLUMNS)} |",
        "|---" * (len(RECIPE_COLUMNS) + 2) + "|",
    ]
    for name, (sources, found) in recipe_differences(result["published"]).items():
        ours = recipe(load_config(f"cifar100/{name}"))
        cells = []
        for fields in RECIPE_COLUMNS.values():
            cell = " / ".join(_show(ours[f]) for f in fields)
            cell = "-" if all(ours[f] is None for f in fields) else cell
            cells.append(cell + "".join(f" ≠ {s} {_show(v)}" for s, k, v in found if k in fields))
        lines.append(f"| {name} | {', '.join(sources) or '-'} | {' | '.join(cells)} |")
    reasons = "\n".join(f"- {k}: {v}." for k, v in result["reasons"].items())
    sources = "\n".join(f"- {k}: {v}." for k, v in result["sources"].items())
    return "\n".join(lines) + f"\n\nWhere ours differs, and why:\n\n{reasons}\n\nSources:\n\n{sources}"


RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "demo": study(vision_table),
    "fmnist_study": study(vision_table),
    "fmnist_study.claims": fmnist_claims,
    "fmnist_study.summary": fmnist_summary,
    "fmnist_mlkd_pilot": study(mlkd_pilot),
    "det_study": study(detection_table),
    "det_scenes": study(detection_table),
    "det_pilots": pilot_table,
    "det_roi_weights": det_roi_weights,
    "loss_overhead": loss_overhead_table,
    "step_attribution": step_attribution_table,
    "engine_overhead": engine_overhead_table,
    "demo_llm": llm_demo,
    "llm_cache_bias": llm_cache_bias_table,
    "cifar100_recipes": recipes_table,
    "llm_onpolicy_cost": onpolicy_cost_table,
    "llm_lm_pilot": study(llm_lm_pilot_table),
    "llm_lm_study": study(llm_lm_table),
    "llm_study": study(llm_study_table),
    "study_readme": study(report_tables),
}


def render(name: str) -> str:
    """The markdown of results/NAME.json; a line saying so when the study has not run yet."""
    if name not in RENDER:
        raise ValueError(f"no renderer for results {name!r}: add one to RENDER in scripts/tables.py")
    path = RESULTS / f"{name.split('.')[0]}.json"
    if not path.is_file():
        return f"_Not measured yet: results/{path.name} does not exist._"
    return RENDER[name](json.loads(path.read_text()))


def regenerate(text: str) -> str:
    """``text`` with every marked table replaced by its freshly rendered content."""
    return MARKER.sub(lambda m: f"{m.group(1)}{render(m.group(2))}\n{m.group(4)}", text)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main() -> int:
    stale = []
    for path in documents():
        text = path.read_text()
        new = regenerate(text)
        if new != text:
            stale.append(path)
            if "--check" not in sys.argv[1:]:
                path.write_text(new)
                print(f"wrote {path.relative_to(ROOT)}")
    if "--check" in sys.argv[1:] and stale:
        print("out of date: " + ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
