"""Plain text as fixed-length token blocks for next-token distillation (the language-model study of
docs/llm.md): every text (one State of the Union speech, or the whole of Moby Dick) is tokenised on its
own with the teacher's tokenizer and cut into consecutive blocks of ``block_len`` tokens (its last,
shorter piece dropped; no block spans two texts), every token labelled. The splits are by speech
(``eakd.llm.data.load_text_splits``), so no speech has blocks in two splits."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from eakd.llm.data import load_text_splits

Row = dict[str, list[int]]  # {"input_ids": (block_len,), "labels": the same ids}
SPLITS = ("train", "validation", "test", "ood")


def text_blocks(tokenizer: Any, texts: list[str], block_len: int) -> list[list[int]]:
    """The consecutive ``block_len``-token blocks of each text in order (no special tokens added; a
    text's last, shorter piece is dropped)."""
    if block_len < 2:
        raise ValueError(f"block_len must be >= 2 (one next-token prediction), got {block_len}")
    blocks = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        blocks += [ids[i : i + block_len] for i in range(0, len(ids) - block_len + 1, block_len)]
    return blocks


def pick(blocks: list[list[int]], n: int | None, seed: int = 0) -> list[list[int]]:
    """``n`` of the blocks (all when None), drawn without replacement by ``seed``, in drawn order;
    ValueError when there are fewer than ``n``."""
    if n is not None and n > len(blocks):
        raise ValueError(f"asked for {n} blocks, the split has only {len(blocks)}")
    order = list(range(len(blocks)))
    random.Random(seed).shuffle(order)
    return [blocks[i] for i in order[:n]]


def lm_rows(
    tokenizer: Any,
    block_len: int,
    sizes: dict[str, int | None],
    folder: str | Path | None = None,
    seed: int = 0,
) -> dict[str, list[Row]]:
    """Rows for the splits named in ``sizes`` ("train", "validation", "test": speeches split by speech
    with ``load_text_splits(folder, seed=seed)``; "ood": Moby Dick), each ``pick``ed down to its size
    (None: all blocks) by ``seed``. A row: {"input_ids", "labels"}, both the block's ids (every token
    labelled; ``eakd.llm.data.collate`` shifts them)."""
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; known: {', '.join(SPLITS)}")
    texts = load_text_splits(folder, seed=seed)
    rows = {}
    for name, n in sizes.items():
        chosen = pick(text_blocks(tokenizer, texts[name], block_len), n, seed)
        rows[name] = [{"input_ids": ids, "labels": list(ids)} for ids in chosen]
    return rows
