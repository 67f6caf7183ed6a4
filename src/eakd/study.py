"""One study runner for the demos and benchmarks: arms (methods) x seeds, paired differences, one table.

    result = run_study(train_one, ["kd", "ea-kd"], [0, 1, 2], Path("runs/study"), protocol)
    print(study_table(result, {"best_top1": "best top-1 (%)"}, reference="kd"))

``train_one(arm, seed) -> {metric: float}`` trains and evaluates one run. Runs go seed-major (every arm of
seed 0, then seed 1, ...), so a study stopped early still compares all arms on its first seeds, and the
result is saved to ``out/study.json`` after every run: ``{"protocol", "arms", "seeds", "runs": {arm: {seed:
metrics}}, "wall_s"}``. Differences to a reference arm are paired by seed with a 95 % t-interval.
"""

from __future__ import annotations

import datetime
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch

from eakd.stats import paired_interval

TrainOne = Callable[[str, int], dict[str, float]]


def _save(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as JSON to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")
    tmp.replace(path)


def code_label(prov: dict[str, Any]) -> str:
    """A provenance's code version as tables print it: the commit shortened to 12 characters, with its
    "+dirty" mark kept (numbers from uncommitted code say so); "?" when none was recorded."""
    commit, plus, rest = str(prov.get("code", "?")).partition("+")
    return commit[:12] + plus + rest


def provenance(repo: Path | None = None) -> dict[str, Any]:
    """Where a result comes from: the code version (git commit of ``repo``, default this source tree, with
    "+dirty" for uncommitted changes outside results/; else the package version), the date (UTC) and the
    machine (platform, CPUs, Python, torch, CUDA device if any)."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        )
        # results/ holds what studies write (a study saving after every run must not mark itself dirty)
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"]
        dirty = subprocess.run(status, cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        code = rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        from eakd import __version__

        code = f"eakd {__version__}"
    return {
        "code": code,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        },
    }


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def reusable_runs(
    before: dict[str, Any], protocol: dict[str, Any], plan: dict[str, list[int]], definitions: dict[str, Any]
) -> dict[str, dict[str, dict[str, float]]]:
    """The finished runs of an earlier study result ``before`` that this study may keep: none unless its
    protocol equals ``protocol``; of each planned arm whose definition (``definitions[arm]``, e.g. its
    config overrides) equals the recorded one, the runs of its planned seeds. An arm whose definition
    changed is dropped whole (rerun, never mixed)."""
    if before.get("protocol") != protocol:
        return {}
    recorded = before.get("definitions", {})
    kept: dict[str, dict[str, dict[str, float]]] = {}
    for arm, seeds in plan.items():
        if recorded.get(arm) != definitions.get(arm):
            continue
        runs = before.get("runs", {}).get(arm, {})
        kept[arm] = {str(s): runs[str(s)] for s in seeds if str(s) in runs}
    return kept


def changed_arms(before: dict[str, Any], definitions: dict[str, Any]) -> list[str]:
    """The arms of ``definitions`` that an earlier study result ``before`` holds runs of under another
    definition (``eakd study --resume`` refuses them rather than rerunning or mixing)."""
    recorded = before.get("definitions", {})
    return [a for a in definitions if before.get("runs", {}).get(a) and recorded.get(a) != definitions[a]]


def seed_plan(arms: list[str], seeds: list[int] | dict[str, list[int]]) -> dict[str, list[int]]:
    """Arm -> its seeds: ``seeds`` for every arm, or each arm's own from an arm -> seeds mapping."""
    return {arm: list(seeds[arm] if isinstance(seeds, dict) else seeds) for arm in arms}


def run_study(
    train_one: TrainOne,
    arms: list[str],
    seeds: list[int] | dict[str, list[int]],
    out: Path,
    protocol: dict[str, Any] | None = None,
    jobs: int = 1,
    threads: int = 1,
    reuse: bool = False,
    results: Path | None = None,
    info: dict[str, Any] | None = None,
    definitions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every (arm, seed), seed-major, saving ``out/study.json`` after each; returns the result.

    seeds: the same for every arm, or arm -> its own seeds (e.g. more for the primary comparisons).
    jobs > 1: runs in that many spawned processes of ``threads`` torch threads (``train_one`` must then
    be picklable: a module-level function or a functools.partial of one), submitted seed-major.
    reuse: keep the finished runs of an earlier result (``results`` if it exists, then ``out/study.json``)
    written under the same protocol, for the arms whose definition is unchanged (``reusable_runs``).
    results: also save there (a ``results/<study>.json`` that the docs' tables are generated from).
    info: more entries of the result (e.g. the teacher's summary). definitions: arm -> what defines it
    (stored in the result, compared on reuse). Every save holds ``provenance()``: the code version, the
    date and the machine. The result: {"protocol", "arms", "seeds" (all, sorted), "arm_seeds",
    "definitions", "runs": {arm: {seed: metrics}}, "provenance", "wall_s" (this run's plus that of the
    result whose runs it kept), **info}.
    """
    out.mkdir(parents=True, exist_ok=True)
    plan = seed_plan(arms, seeds)
    defs = {arm: (definitions or {}).get(arm) for arm in arms}
    runs: dict[str, dict[str, dict[str, float]]] = {arm: {} for arm in arms}
    earlier = 0.0  # wall time of the runs kept (of the result they come from)
    for old in (results, out / "study.json"):
        if reuse and old is not None and old.is_file():
            before = json.loads(old.read_text())
            kept = reusable_runs(before, protocol or {}, plan, defs)
            for arm, arm_runs in kept.items():
                runs[arm].update(arm_runs)
            if any(kept.values()):
                earlier = max(earlier, float(before.get("wall_s", 0.0)))
    result: dict[str, Any] = {
        "protocol": protocol or {},
        "arms": arms,
        "seeds": sorted({s for arm_seeds in plan.values() for s in arm_seeds}),
        "arm_seeds": plan,
        "definitions": defs,
        "runs": runs,
        "provenance": provenance(),
        "wall_s": earlier,
        **(info or {}),
    }
    todo = [(arm, seed) for seed in result["seeds"] for arm in arms if seed in plan[arm]]
    todo = [(arm, seed) for arm, seed in todo if str(seed) not in runs[arm]]
    start = time.perf_counter()

    def done(arm: str, seed: int, metrics: dict[str, float]) -> None:
        runs[arm][str(seed)] = metrics
        result["wall_s"] = earlier + time.perf_counter() - start
        for path in (out / "study.json", results):
            if path is not None:
                _save(path, result)
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"  {arm} seed {seed}: {text}", flush=True)

    print(f"{len(todo)} runs to do, {sum(map(len, runs.values()))} kept from earlier", flush=True)
    for path in (out / "study.json", results):  # the plan and the kept runs, before the first run ends
        if path is not None:
            _save(path, result)
    if jobs <= 1:
        for arm, seed in todo:
            done(arm, seed, train_one(arm, seed))
        return result
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = [(arm, seed, pool.submit(train_one, arm, seed)) for arm, seed in todo]
        for arm, seed, future in futures:
            try:
                metrics = future.result()
            except Exception as err:
                raise RuntimeError(f"run {arm} seed {seed} failed: {err}") from err
            done(arm, seed, metrics)
    return result


def values(result: dict[str, Any], arm: str, metric: str) -> dict[int, float]:
    """seed -> the metric of ``arm``'s finished runs."""
    return {int(s): float(m[metric]) for s, m in result["runs"].get(arm, {}).items() if metric in m}


def paired_gain(result: dict[str, Any], arm: str, reference: str, metric: str) -> tuple[float, float, int]:
    """(mean of arm - reference over the seeds both finished, 95 % half-width (nan for one), pairs)."""
    own, ref = values(result, arm, metric), values(result, reference, metric)
    seeds = sorted(set(own) & set(ref))
    if not seeds:
        return float("nan"), float("nan"), 0
    mean, half = paired_interval([own[s] for s in seeds], [ref[s] for s in seeds])
    return mean, half, len(seeds)


def _mean_std(xs: list[float]) -> str:
    spread = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.2f} ± {spread:.2f}"


def _interval(mean: float, half: float) -> str:
    """``[low, high]`` of a 95 % interval; "(no interval)" for one pair, whose half-width is nan."""
    return "(no interval)" if math.isnan(half) else f"[{mean - half:+.2f}, {mean + half:+.2f}]"


def study_table(
    result: dict[str, Any],
    metrics: dict[str, str],
    reference: str | dict[str, str] | None = None,
    compare: list[str] | None = None,
) -> str:
    """Markdown: mean ± std over seeds per arm for each metric (key -> column label), the per-seed values
    of the first metric, and each arm minus its reference paired by seed with its 95 % interval, for the
    metrics in ``compare`` (default: all). reference: one arm for all, or arm -> its own reference (arms
    not in the mapping are not compared)."""
    head = f"| arm | seeds | {' | '.join(metrics.values())} |"
    lines = [head, "|" + "---|" * (2 + len(metrics))]
    first = next(iter(metrics))
    for arm in result["arms"]:
        cells = [values(result, arm, m) for m in metrics]
        if not cells[0]:
            continue
        stats = " | ".join(_mean_std(list(c.values())) if c else "-" for c in cells)
        lines.append(f"| {arm} | {len(cells[0])} | {stats} |")
    per_seed = "; ".join(
        f"{arm} " + ", ".join(f"{v:.2f}" for _, v in sorted(values(result, arm, first).items()))
        for arm in result["arms"]
        if values(result, arm, first)
    )
    lines += ["", f"per seed ({metrics[first]}): {per_seed}"]
    if reference is not None:
        refs = reference if isinstance(reference, dict) else {a: reference for a in result["arms"]}
        for arm, ref in refs.items():
            if arm == ref or arm not in result["arms"] or ref not in result["arms"]:
                continue
            keys = compare if compare is not None else list(metrics)
            gains = {metrics[k]: paired_gain(result, arm, ref, k) for k in keys}
            parts = [f"{lb} {m:+.2f} {_interval(m, h)}" for lb, (m, h, n) in gains.items() if n]
            pairs = max(n for _, _, n in gains.values())
            if parts:
                mean, half, _ = next(iter(gains.values()))
                text = f"{arm} - {ref} (95 % CI, {pairs} paired seeds): " + "; ".join(parts)
                shown = verdict(mean, half, higher_is_better(keys[0]))
                lines.append(f"{text} -> {shown} ({next(iter(gains))})")
    return "\n".join(lines)


# a metric named with one of these words (between underscores: "last_perplexity", "val_kl") is better lower
LOWER_IS_BETTER = frozenset({"perplexity", "ppl", "kl", "loss"})


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better: yes but for a name holding a word of
    ``LOWER_IS_BETTER``."""
    return not LOWER_IS_BETTER & set(metric.lower().split("_"))


def verdict(mean: float, half: float, higher: bool = True) -> str:
    """What a paired difference shows: "better" / "worse" when its 95 % interval excludes 0 (on the side
    where the metric is better: above 0 when ``higher`` is better, else below), else "no difference shown"
    (also for a single pair, whose interval is undefined)."""
    if math.isnan(half):
        return "no difference shown (one seed)"
    sign = 1.0 if higher else -1.0
    if sign * mean - half > 0:
        return "better"
    if sign * mean + half < 0:
        return "worse"
    return "no difference shown"


class Claim(NamedTuple):
    """A published finding a study checks: ``arm`` - ``reference`` should have the sign ``sign`` (+1: the
    arm is better, -1: worse). text: the claim in words; reported: the published numbers."""

    text: str
    reported: str
    arm: str
    reference: str
    sign: int


def claim_verdict(claim: Claim, mean: float, half: float, pairs: int) -> str:
    """One word: "pending" (no paired runs yet), "agrees" / "disagrees" (the 95 % interval excludes 0 on
    the claimed / the other side), else "no evidence" (also for a single pair)."""
    if pairs == 0:
        return "pending"
    if math.isnan(half) or abs(mean) <= half:
        return "no evidence"
    return "agrees" if mean * claim.sign > 0 else "disagrees"


def claims_table(result: dict[str, Any], claims: list[Claim], metric: str, label: str) -> str:
    """Markdown: each claim beside the study's paired difference of ``metric`` (labelled ``label``), its
    95 % interval, the pairs behind it and ``claim_verdict``; arms without runs read "pending"."""
    lines = [
        f"| the paper's finding | as reported | arms | measured difference, {label} | 95 % CI | seeds | "
        "verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        mean, half, n = paired_gain(result, c.arm, c.reference, metric)
        diff = f"{mean:+.2f}" if n else "-"
        ci = f"[{mean - half:+.2f}, {mean + half:+.2f}]" if n > 1 else "-"
        arms = f"{c.arm} - {c.reference}"
        lines.append(
            f"| {c.text} | {c.reported} | {arms} | {diff} | {ci} | {n} | {claim_verdict(c, mean, half, n)} |"
        )
    return "\n".join(lines)
