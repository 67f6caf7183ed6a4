"""Offline teacher cache: the teacher's top-k log-probs and full entropy per labelled token, computed once
(``eakd llm cache``) and read by training runs instead of running the teacher at every step.

The cache is one safetensors file: ``ids`` (M, k) int32 top-k token ids, ``logprobs`` (M, k) float32
teacher log-probabilities at the distillation temperature, ``tail_logmass`` (M,) float32 log of the mass
outside the top-k (exact, from the full logits), ``entropy`` (M,) float32 teacher entropy in nats at the
entropy temperature tau, ``offsets`` (R + 1,) int64 (row r owns tokens offsets[r]:offsets[r+1]), over
the M labelled tokens of R encoded rows, in order; its metadata holds V, k, the temperatures, the teacher
name and a fingerprint of the rows' token ids and labels, so a cache is never used with other data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from eakd.llm.data import IGNORE_INDEX, collate
from eakd.llm.loss import TeacherTopK
from eakd.weighting import entropy

CACHE_FORMAT = "eakd-teacher-cache-2"


def fingerprint(rows: Sequence[dict[str, list[int]]]) -> str:
    """sha256 of the rows' input_ids and labels, in order (hex)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["input_ids"], r["labels"]]).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TeacherCache:
    """A teacher's top-k distribution and entropy at the labelled tokens of a list of encoded rows."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail_logmass: torch.Tensor
    entropy: torch.Tensor
    offsets: torch.Tensor
    vocab_size: int
    top_k: int
    temperature: float
    tau: float
    teacher: str
    rows_fingerprint: str

    def batch(self, index: torch.Tensor, device: torch.device | str | None = None) -> TeacherTopK:
        """The ``TeacherTopK`` of rows ``index`` (B,) in batch order: their labelled tokens, row-major."""
        parts = [torch.arange(int(self.offsets[i]), int(self.offsets[i + 1])) for i in index.tolist()]
        sel = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        return TeacherTopK(
            self.ids[sel].long().to(device),
            self.logprobs[sel].to(device),
            self.entropy[sel].to(device),
            self.vocab_size,
            self.temperature,
            self.tau,
            self.tail_logmass[sel].to(device),
        )

    def attach(self, rows: Sequence[dict[str, list[int]]]) -> list[dict[str, Any]]:
        """The rows with their ``cache_index``, after checking they are the rows the cache was written for."""
        if len(rows) != len(self.offsets) - 1 or fingerprint(rows) != self.rows_fingerprint:
            raise ValueError(
                f"the teacher cache was written for other data ({len(self.offsets) - 1} rows, fingerprint "
                f"{self.rows_fingerprint[:12]}); got {len(rows)} rows: rebuild it with `eakd llm cache` for "
                "this data section, tokenizer and max_length"
            )
        return [{**r, "cache_index": i} for i, r in enumerate(rows)]

    def save(self, path: str | Path) -> Path:
        """Write the cache as one safetensors file (atomically); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": CACHE_FORMAT,
            "vocab_size": str(self.vocab_size),
            "top_k": str(self.top_k),
            "temperature": repr(self.temperature),
            "tau": repr(self.tau),
            "teacher": self.teacher,
            "rows_fingerprint": self.rows_fingerprint,
        }
        names = ("ids", "logprobs", "tail_logmass", "entropy", "offsets")
        tensors = {k: getattr(self, k) for k in names}
        tmp = path.with_name(path.name + ".partial")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TeacherCache:
        """Read a cache written by ``save``; a file of another format is a clear error."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(
                f"{path} is not an eakd teacher cache of format {CACHE_FORMAT!r} (found "
                f"{meta.get('format')!r}); write it again with `eakd llm cache`"
            )
        t = load_file(str(path))
        return cls(
            t["ids"],
            t["logprobs"],
            t["tail_logmass"],
            t["entropy"],
            t["offsets"],
            int(meta["vocab_size"]),
            int(meta["top_k"]),
            float(meta["temperature"]),
            float(meta["tau"]),
            meta["teacher"],
            meta["rows_fingerprint"],
        )

    def coverage(self) -> torch.Tensor:
        """(M,) teacher probability mass inside the top-k per token, at the cache's temperature."""
        return self.logprobs.double().exp().sum(-1).float()


@torch.no_grad()
def build_cache(
    teacher: torch.nn.Module,
    rows: Sequence[dict[str, list[int]]],
    pad_token_id: int,
    top_k: int = 64,
    temperature: float = 1.0,
    tau: float = 2.0,
    batch_size: int = 8,
    vocab_size: int | None = None,
    teacher_name: str = "",
    progress: bool = True,
) -> TeacherCache:
    """Run the teacher once over the encoded rows and keep, per labelled token (the position predicting a
    label), the top-k log-probs at ``temperature`` and the full entropy at ``tau``.

    vocab_size: the real vocabulary when the lm_head has padding rows (rows beyond it are dropped).
    """
    if not rows:
        raise ValueError("no rows to cache")
    device = next(teacher.parameters()).device
    v = vocab_size
    ids, logprobs, tails, ents, counts = [], [], [], [], []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="teacher cache", unit="batch", disable=not progress):
        batch = collate(list(rows[start : start + batch_size]), pad_token_id)
        feed = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        logits = teacher(**feed).logits[:, :-1]
        v = vocab_size or logits.shape[-1]
        if top_k > v:
            raise ValueError(f"top_k {top_k} exceeds the vocabulary {v}")
        labels = batch["labels"][:, 1:].to(device)
        valid = labels != IGNORE_INDEX
        z = logits[valid][:, :v].float()
        full = torch.log_softmax(z / temperature, dim=-1)
        lp, idx = full.topk(top_k, dim=-1)
        ids.append(idx.to(torch.int32).cpu())
        logprobs.append(lp.cpu())
        tails.append(full.scatter_(-1, idx, -torch.inf).logsumexp(-1).cpu())
        ents.append(entropy(z, tau).cpu())
        counts.append(valid.sum(1).cpu())
    n = torch.cat(counts)
    return TeacherCache(
        torch.cat(ids),
        torch.cat(logprobs),
        torch.cat(tails),
        torch.cat(ents),
        torch.cat([torch.zeros(1, dtype=torch.long), n.cumsum(0)]),
        int(v),
        top_k,
        float(temperature),
        float(tau),
        teacher_name,
        fingerprint(rows),
    )
