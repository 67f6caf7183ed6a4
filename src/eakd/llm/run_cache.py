"""The teacher cache of a run config (``eakd llm cache``, ``eakd llm demo``): the entropy temperature it
holds, writing it over the config's training rows, and reusing one written for the same rows and settings."""

from __future__ import annotations

from pathlib import Path

from eakd.engine.config import ConfigError
from eakd.llm.cache import (
    CACHE_BATCH,
    CACHE_FORMAT,
    TOP_K,
    TeacherCache,
    build_cache,
    cache_path,
    fingerprint,
    replaceable_cache,
)
from eakd.llm.models import load_teacher, load_tokenizer
from eakd.llm.run import LLMRunConfig, split_rows, training_args
from eakd.llm.trainer import EAKDConfig


def cache_tau(args: EAKDConfig) -> float:
    """The entropy temperature a teacher cache for ``args`` holds: its policy's tau (the policy's default
    when train.tau is null), else train.tau for policies without entropies."""
    policy = args.loss_settings().policy()
    tau = policy.tau if policy is not None and policy.tau is not None else args.tau
    if tau is None:
        raise ConfigError("set train.tau to write a teacher cache (its entropies are at tau)")
    return tau


def write_cache(
    cfg: LLMRunConfig,
    path: str | Path,
    top_k: int = TOP_K,
    batch_size: int = CACHE_BATCH,
    progress: bool = True,
) -> TeacherCache:
    """Run the config's teacher once over its training rows and save the top-k cache to ``path``, at the
    train section's temperature and policy's tau (so runs of that config can read it). A directory at
    ``path`` or top_k < 1 is a ValueError, a file there that is not an eakd teacher cache a FileExistsError
    (``replaceable_cache``), before the teacher is loaded."""
    path = cache_path(path)
    replaceable_cache(path)
    if top_k < 1:
        raise ValueError(f"top_k (eakd llm cache --top-k) must be >= 1, got {top_k}")
    args = training_args(cfg)
    teacher, tokenizer = load_teacher(cfg.model.teacher)
    rows = split_rows(cfg, tokenizer)[0]
    cache = build_cache(
        teacher,
        rows,
        tokenizer.pad_token_id,
        top_k=top_k,
        temperature=args.temperature,
        tau=cache_tau(args),
        batch_size=batch_size,
        vocab_size=args.vocab_size,
        teacher_name=cfg.model.teacher,
        progress=progress,
    )
    cache.save(path)
    return cache


def reuse_or_write_cache(
    cfg: LLMRunConfig, path: str | Path, top_k: int = TOP_K, batch_size: int = CACHE_BATCH
) -> tuple[TeacherCache, bool]:
    """(the cache at ``path`` if it was written for this config's rows, teacher, temperature, tau and top_k,
    else a fresh one written there; whether it was reused). Only an eakd teacher cache is replaced: any
    other file at ``path`` is a FileExistsError (``replaceable_cache``)."""
    args = training_args(cfg)
    old = TeacherCache.load(path) if replaceable_cache(path) == CACHE_FORMAT else None
    if old is not None:
        rows = split_rows(cfg, load_tokenizer(cfg.model.teacher))[0]
        same = (old.teacher, old.top_k, old.temperature, old.tau, old.rows_fingerprint) == (
            cfg.model.teacher,
            top_k,
            args.temperature,
            cache_tau(args),
            fingerprint(rows),
        )
        if same:
            return old, True
    return write_cache(cfg, path, top_k, batch_size), False
