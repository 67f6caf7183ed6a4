"""The LLM instruction-following study behind ``eakd llm demo`` and benchmarks/llm_study.py (protocol in
docs/llm.md): KD and EA-KD arms on one teacher, one shared warm-started student, the same data order and
learning rate per seed, compared with KD paired by seed through the shared study runner (``eakd.study``:
seed-major, saved after every run, paired 95 % intervals)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from eakd.llm.run import LLMRunConfig, cache_tau, reuse_or_write_cache, run, training_args
from eakd.study import run_study, study_table

# train-section overrides per arm; everything else is shared
METHODS: dict[str, dict[str, Any]] = {
    "kd": {"divergence": "fkl", "weighting": "none"},
    "ea-kd": {"divergence": "fkl", "weighting": "ea", "tau": 2.0},
    "ea-kd-tau1": {"divergence": "fkl", "weighting": "ea", "tau": 1.0},
    "kd-ce": {"divergence": "fkl", "weighting": "none", "kd_weight": 0.5, "ce_weight": 0.5},
    "ea-kd-ce": {"divergence": "fkl", "weighting": "ea", "tau": 2.0, "kd_weight": 0.5, "ce_weight": 0.5},
    "inverse-kd": {"divergence": "fkl", "weighting": "inverse", "tau": 2.0},
    "ea-kd-norm": {"divergence": "fkl", "weighting": "ea", "tau": 2.0, "weight_norm": "mean"},
}
# each arm against KD, paired by seed (the +CE arms too: what the hard-label term adds shows against KD)
REFERENCE = {arm: "kd" for arm in METHODS if arm != "kd"}
METRICS = {
    "rougeL": "test ROUGE-L sampled (best val)",
    "rougeL_greedy": "greedy (best val)",
    "rougeL_last": "sampled (last)",
    "perplexity": "perplexity",
    "top1_confident": "top-1 agr. p_max>0.9",
    "top1_rest": "top-1 agr. rest",
    "kl_at_start": "KL at start",
    "train_s": "train s/run",
}
COMPARE = ["rougeL", "rougeL_greedy", "rougeL_last"]


def cache_file(out_dir: str | Path, tau: float) -> str:
    """The study's teacher cache for entropy temperature ``tau`` (one per tau among the arms)."""
    return str(Path(out_dir) / f"teacher_cache_tau{tau:g}.safetensors")


def method_config(
    base: LLMRunConfig, method: str, seed: int, out_dir: str | Path, teacher_cache: bool = False
) -> LLMRunConfig:
    """``base`` with ``method``'s train settings, the training seed (data order) and the output folder
    ``out_dir/<method>/seed<k>``; the split stays that of data seed 0; with ``model.warm_start_steps`` >
    0 every arm starts from the study's own warm start ``out_dir/warm-start`` (written by the first run);
    with ``teacher_cache``, the arm reads the cache of its tau (``cache_file``)."""
    cfg = copy.deepcopy(base)
    cfg.data.seed = 0
    if cfg.model.warm_start_steps:
        cfg.model.warm_start = str(Path(out_dir) / "warm-start")
    cfg.train = {
        **cfg.train,
        **METHODS[method],
        "seed": seed,
        "output_dir": str(Path(out_dir) / method / f"seed{seed}"),
    }
    if teacher_cache:
        cfg.model.teacher_cache = cache_file(out_dir, cache_tau(training_args(cfg)))
    return cfg


def run_metrics(res: dict[str, Any]) -> dict[str, float]:
    """A run's study metrics (``METRICS``) from its results.json content."""
    best, last, diag = res["student"], res["student_last"], res["diagnostics"]
    return {
        "rougeL": best["rougeL"],
        "rougeL_greedy": best["rougeL_greedy"],
        "rougeL_last": last["rougeL"],
        "rougeL_greedy_last": last["rougeL_greedy"],
        "perplexity": best["perplexity"],
        "val_rougeL": res["validation"]["best"]["rougeL"],
        "best_step": res["validation"]["best"]["step"],
        "kl_at_start": res["kl_at_start"],
        "kl_confident": diag["confident"]["kl"],
        "kl_rest": diag["rest"]["kl"],
        "top1_confident": diag["confident"]["top1"],
        "top1_rest": diag["rest"]["top1"],
        "train_s": res["train_seconds"],
    }


def llm_study(
    base: LLMRunConfig,
    methods: list[str],
    seeds: list[int],
    out_dir: str | Path,
    eval_teacher: bool = False,
    teacher_cache: bool = False,
    top_k: int = 64,
    results: Path | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """Every method x seed (``eakd.study.run_study``, seed-major; ``results``: also saved there; ``reuse``:
    keep the finished runs of the same protocol). teacher_cache: run the teacher once per tau into
    ``cache_file`` (reused when it matches) and train every arm from it. With ``eval_teacher`` the
    teacher's own test ROUGE-L and perplexity come from the first run, under "teacher"."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    written: set[str] = set()
    for method in methods if teacher_cache else []:
        cfg = method_config(base, method, seeds[0], out_dir, teacher_cache=True)
        path = str(cfg.model.teacher_cache)
        if path not in written:
            written.add(path)
            cache, reused = reuse_or_write_cache(cfg, path, top_k)
            mass = float(cache.coverage().mean())
            how = "reused" if reused else "written"
            print(f"teacher cache {path} ({how}): {cache.ids.shape[0]} tokens, top-{top_k} mass {mass:.3f}")
    teacher: dict[str, Any] = {}

    def train_one(method: str, seed: int) -> dict[str, float]:
        cfg = method_config(base, method, seed, out_dir, teacher_cache)
        res = run(cfg, eval_teacher=eval_teacher and not teacher)
        teacher.update(res.get("teacher", {}))
        return run_metrics(res)

    protocol = {"base": dataclasses.asdict(base), "methods": methods, "teacher_cache": teacher_cache}
    result = run_study(train_one, methods, seeds, Path(out_dir), protocol, reuse=reuse, results=results)
    if teacher:
        result["teacher"] = {k: teacher[k] for k in ("rougeL", "rougeL_greedy", "perplexity")}
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: the teacher (if evaluated), then ``eakd.study.study_table`` with each arm minus KD paired
    by seed, only when at least two seeds finished (one seed gives no interval)."""
    lines = []
    if "teacher" in result:
        t = result["teacher"]
        lines += [f"teacher: test ROUGE-L {t['rougeL']:.2f} sampled, {t['rougeL_greedy']:.2f} greedy", ""]
    metrics = {
        k: v for k, v in METRICS.items() if any(k in m for r in result["runs"].values() for m in r.values())
    }
    seeds = max((len(r) for r in result["runs"].values()), default=0)
    reference = REFERENCE if seeds >= 2 else None
    compare = [k for k in COMPARE if k in metrics]
    return "\n".join([*lines, study_table(result, metrics, reference, compare=compare)])
