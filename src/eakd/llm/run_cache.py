"""The teacher cache of a run config (``eakd llm cache``, ``eakd llm demo``): the entropy temperature it
holds, writing it over the config's training rows, and reusing one written for the same rows and settings."""

from __future__ import annotations

from pathlib import Path

from eakd.engine.config import ConfigError
from eakd.llm.cache import CACHE_BATCH, TeacherCache, build_cache, fingerprint
from eakd.llm.cache_file import CACHE_FORMAT, cache_path, replaceable_cache
from eakd.llm.models import load_teacher, load_tokenizer
from eakd.llm.progress import QUIET, ProgressHook
from eakd.llm.run import LLMRunConfig, split_rows, training_args
from eakd.llm.sparse import check_sampled
from eakd.llm.trainer import EAKDConfig


def cache_tau(args: EAKDConfig) -> float:
    """The entropy temperature a teacher cache for ``args`` holds: its policy's tau (the policy's default
    when train.tau is null), else train.tau for policies without entropies."""
    policy = args.loss_settings().policy()
    tau = policy.tau if policy is not None and policy.tau is not None else args.tau
    if tau is None:
        raise ConfigError("set train.tau to write a teacher cache (its entropies are at tau)")
    return tau


def cache_samples(cfg: LLMRunConfig) -> int:
    """The drawn tokens per labelled token of the config's cache section: 0 for "topk", top_k - exact for
    "sampled" (ConfigError unless exact < top_k)."""
    c = cfg.cache
    if c.sparse == "topk":
        return 0
    if c.exact >= c.top_k:
        raise ConfigError(f"a sampled cache needs cache.exact < cache.top_k, got {c.exact} and {c.top_k}")
    return c.top_k - c.exact


def write_cache(
    cfg: LLMRunConfig,
    path: str | Path,
    batch_size: int = CACHE_BATCH,
    progress: ProgressHook = QUIET,
) -> TeacherCache:
    """Run the config's teacher once over its training rows and save the cache of its cache section to
    ``path``, at the train section's temperature and policy's tau (so runs of that config can read it), its
    batches reported to ``progress`` (``eakd.llm.progress``). A directory at ``path``, an inconsistent cache
    section or a sampled cache the config's divergence cannot use is an error, and a file there that is not
    an eakd teacher cache (of either kind) a FileExistsError (``replaceable_cache``), before the teacher is
    loaded."""
    path = cache_path(path)
    replaceable_cache(path)
    samples = cache_samples(cfg)
    args = training_args(cfg)
    if samples:
        check_sampled(args.loss_settings())
    teacher, tokenizer = load_teacher(cfg.model.teacher)
    rows = split_rows(cfg, tokenizer)[0]
    cache = build_cache(
        teacher,
        rows,
        tokenizer.pad_token_id,
        top_k=cfg.cache.top_k,
        temperature=args.temperature,
        tau=cache_tau(args),
        batch_size=batch_size,
        vocab_size=args.vocab_size,
        teacher_name=cfg.model.teacher,
        progress=progress,
        samples=samples,
        seed=cfg.cache.seed,
    )
    cache.save(path)
    return cache


def reuse_or_write_cache(
    cfg: LLMRunConfig, path: str | Path, batch_size: int = CACHE_BATCH, progress: ProgressHook = QUIET
) -> tuple[TeacherCache, bool]:
    """(the cache at ``path`` if it was written for this config's rows, teacher, temperature, tau and cache
    section, else a fresh one written there; whether it was reused). Only an eakd teacher cache is replaced:
    any other file at ``path`` is a FileExistsError (``replaceable_cache``)."""
    args = training_args(cfg)
    old = TeacherCache.load(path) if replaceable_cache(path) == CACHE_FORMAT else None
    if old is not None:
        rows = split_rows(cfg, load_tokenizer(cfg.model.teacher))[0]
        kept = (old.teacher, old.top_k, old.samples, old.seed, old.temperature, old.tau, old.rows_fingerprint)
        same = kept == (
            cfg.model.teacher,
            cfg.cache.top_k,
            cache_samples(cfg),
            cfg.cache.seed,
            args.temperature,
            cache_tau(args),
            fingerprint(rows),
        )
        if same:
            return old, True
    return write_cache(cfg, path, batch_size, progress), False
