"""Offline teacher cache: the teacher's top-k log-probs and full entropy per labelled token, computed once
(``eakd llm cache``) and read by training runs instead of running the teacher at every step; a batch's
share of it is a ``TeacherTopK``, which both loss paths take as the teacher.

The cache is one safetensors file: ``ids`` (M, k) int32 token ids, ``logprobs`` (M, k) float32 their
teacher log-probabilities at the distillation temperature, ``tail_logmass`` (M,) float32 log of the mass
outside the first k - samples ids (exact, from the full logits), ``entropy`` (M,) float32 teacher entropy
in nats at the entropy temperature tau, ``offsets`` (R + 1,) int64 (row r owns tokens
offsets[r]:offsets[r+1]), over the M labelled tokens of R encoded rows, in order; its metadata holds its
kind, V, k, samples, the seed, the temperatures, the teacher name and a fingerprint of the rows' token ids
and labels, so a cache is never used with other data. Kind "topk" (samples 0): the ids are the teacher's
top k. Kind "sampled": the top k - samples, then ``samples`` draws from the rest (``eakd.llm.sparse``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from eakd.checks import check_flag, check_positive
from eakd.llm.cache_checks import LOGPROB_SLACK, impossible_values
from eakd.llm.cache_file import CACHE_FORMAT, cache_path, replaceable_cache
from eakd.llm.data import IGNORE_INDEX, collate
from eakd.llm.progress import QUIET, ProgressHook
from eakd.llm.settings import TokenLossSettings
from eakd.llm.sparse import KINDS, check_settings, draw_uniforms, sparse_rows, topk_log_probs
from eakd.weighting import entropy

TOP_K = 64  # teacher log-probs kept per token by default
CACHE_BATCH = 8  # rows per teacher batch when writing a cache


class TeacherTopK(NamedTuple):
    """An offline teacher at the valid (labelled) positions of a batch, in row-major order.

    ids (M, k) int64: the teacher's top-k token ids per valid token. logprobs (M, k): their teacher
    log-probabilities at ``temperature`` (the distillation temperature). entropy (M,): the teacher's full
    entropy in nats at ``tau`` (the entropy temperature). vocab_size: the teacher's vocabulary V.
    tail_logmass (M,) or None: log of the teacher mass outside the top-k (exact, from the full logits;
    None: 1 - sum(top-k), which float rounding floors when the top-k hold nearly all the mass). That mass
    is spread evenly over the other V - k tokens. mismatch: a 0-dim bool flag on the device, True when the
    batch's labelled tokens and the cache rows it was gathered from differed in count
    (``TeacherCache.batch`` with ``tokens``), or None. samples: 0 for a top-k cache; for a sampled one,
    the last ``samples`` of the k ids are draws from the teacher outside the first k - samples, and
    tail_logmass is the mass outside those (``eakd.llm.sparse``: the divergence is estimated from them).
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    entropy: torch.Tensor
    vocab_size: int
    temperature: float
    tau: float
    tail_logmass: torch.Tensor | None = None
    mismatch: torch.Tensor | None = None
    samples: int = 0

    def rows(self, i: int, j: int) -> TeacherTopK:
        """The cache of valid tokens i:j."""
        tail = None if self.tail_logmass is None else self.tail_logmass[i:j]
        return self._replace(
            ids=self.ids[i:j], logprobs=self.logprobs[i:j], entropy=self.entropy[i:j], tail_logmass=tail
        )

    def log_probs(self, vocab_size: int) -> torch.Tensor:
        """(M, vocab_size) float32 teacher log-probabilities rebuilt by ``topk_log_probs`` (top-k only)."""
        if self.samples:
            raise ValueError("a sampled teacher cache has no full distribution: see eakd.llm.sparse")
        return topk_log_probs(self.ids, self.logprobs, vocab_size, self.tail_logmass)

    def checked(
        self, s: TokenLossSettings, rows: int, vocab: int, defer: bool = False
    ) -> tuple[TeacherTopK, torch.Tensor]:
        """(this cache, a 0-dim bool flag): it must match the loss settings (temperature; the policy's tau,
        built-in policies only), the batch's count of labelled tokens and the vocabulary, and hold k <= V
        ids per token (ValueError). Its values must be possible (``impossible_values``; ids also < vocab)
        and ``mismatch`` False: a ValueError naming what is wrong (host reads); with ``defer`` (no host
        read), the ids are clamped into [0, vocab) and the flag is set."""
        if (
            self.ids.shape != self.logprobs.shape
            or self.ids.dim() != 2
            or self.entropy.shape != self.ids.shape[:1]
        ):
            raise ValueError(
                f"teacher cache shapes disagree: ids {tuple(self.ids.shape)}, logprobs "
                f"{tuple(self.logprobs.shape)}, entropy {tuple(self.entropy.shape)}; "
                "expected (M, k), (M, k), (M,)"
            )
        if self.samples and self.tail_logmass is None:
            raise ValueError("a sampled teacher cache needs its tail_logmass (the mass its draws share)")
        if self.tail_logmass is not None and self.tail_logmass.shape != self.entropy.shape:
            raise ValueError(f"teacher cache tail_logmass {tuple(self.tail_logmass.shape)} is not (M,)")
        if self.ids.shape[0] != rows:
            raise ValueError(
                f"the teacher cache has {self.ids.shape[0]} tokens but the batch has {rows} labelled tokens; "
                "was the cache written for this data, tokenizer and max_length?"
            )
        if self.vocab_size < vocab:
            raise ValueError(
                f"the teacher cache's vocabulary ({self.vocab_size}) is smaller than the loss's ({vocab})"
            )
        if self.ids.shape[1] > self.vocab_size:
            raise ValueError(
                f"the teacher top-k holds k={self.ids.shape[1]} ids per token, more than its vocabulary "
                f"V={self.vocab_size}"
            )
        check_settings(self.temperature, self.tau, s, self.samples)
        bad = torch.zeros((), dtype=torch.bool, device=self.ids.device)
        if self.mismatch is not None:
            msg = "the teacher cache rows do not hold the batch's labelled tokens (written for other data?)"
            bad = check_flag(msg, self.mismatch, defer=defer)
        if not rows:
            return self, bad
        found = impossible_values(
            self.ids, self.logprobs, self.entropy, self.tail_logmass, self.vocab_size, self.samples
        )
        if self.vocab_size > vocab:  # a teacher vocabulary padded beyond the loss's
            found[f"ids beyond the loss's vocabulary {vocab}"] = (self.ids >= vocab).any()
        for what, flag in found.items():
            bad = bad | check_flag(f"the teacher top-k holds impossible values: {what}", flag, defer=defer)
        return self._replace(ids=self.ids.clamp(0, vocab - 1)), bad


def fingerprint(rows: Sequence[dict[str, list[int]]]) -> str:
    """sha256 of the rows' input_ids and labels, in order (hex)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["input_ids"], r["labels"]]).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TeacherCache:
    """A teacher's top-k distribution and entropy at the labelled tokens of a list of encoded rows; its
    internal consistency is checked when it is built or loaded (ValueError, see ``__post_init__``)."""

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
    samples: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        """ids (M, k) integer in [0, V) with k = top_k in [1, V]; samples in [0, k] (then tail_logmass
        finite: the draws share that mass); logprobs (M, k) finite and <= 0; tail_logmass (M,) <= 0
        (-inf allowed: no mass outside the top-k); entropy (M,) finite and >= 0; nothing
        ``impossible_values`` flags (repeated exact ids, masses above 1, entropies above ln V); offsets
        (R + 1,) integer from 0, non-decreasing, ending at M; temperature, tau > 0. One pass over the values
        when the cache is built or loaded, never per training step."""
        ids, m = self.ids, self.ids.shape[0] if self.ids.dim() else 0
        if self.top_k < 1 or self.top_k > self.vocab_size:
            raise ValueError(f"top_k {self.top_k} is not in [1, vocab_size {self.vocab_size}]")
        if not 0 <= self.samples <= self.top_k:
            raise ValueError(f"samples {self.samples} is not in [0, top_k {self.top_k}]")
        if ids.dim() != 2 or ids.shape[1] != self.top_k or ids.is_floating_point():
            raise ValueError(f"ids {tuple(ids.shape)} {ids.dtype} are not integer (M, top_k={self.top_k})")
        if self.logprobs.shape != ids.shape:
            raise ValueError(f"logprobs {tuple(self.logprobs.shape)} do not match ids {tuple(ids.shape)}")
        for name in ("tail_logmass", "entropy"):
            if getattr(self, name).shape != (m,):
                raise ValueError(f"{name} {tuple(getattr(self, name).shape)} is not ({m},), one per token")
        off = self.offsets
        if off.dim() != 1 or off.numel() < 2 or off.is_floating_point():
            raise ValueError(f"offsets {tuple(off.shape)} {off.dtype} are not integer (R + 1,) with R >= 1")
        if int(off[0]) != 0 or int(off[-1]) != m or bool((off.diff() < 0).any()):
            raise ValueError(
                f"offsets must rise from 0 to the token count {m} (row r owns offsets[r]:[r + 1])"
            )
        if m and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(
                f"ids span [{int(ids.min())}, {int(ids.max())}], not within [0, {self.vocab_size})"
            )
        checks = {
            "logprobs": self.logprobs.isfinite() & (self.logprobs <= LOGPROB_SLACK),
            "tail_logmass": (self.tail_logmass.isfinite() if self.samples else ~self.tail_logmass.isnan())
            & (self.tail_logmass <= LOGPROB_SLACK),
            "entropy": self.entropy.isfinite() & (self.entropy >= -LOGPROB_SLACK),
        }
        for name, ok in checks.items():
            if not bool(ok.all()):
                raise ValueError(f"{name} holds {int((~ok).sum())} NaN, infinite or out-of-range value(s)")
        found = impossible_values(
            ids, self.logprobs, self.entropy, self.tail_logmass, self.vocab_size, self.samples
        )
        for what, flag in found.items():
            if bool(flag):
                raise ValueError(f"the cache holds impossible values: {what}")
        check_positive("temperature", self.temperature)
        check_positive("tau", self.tau)

    def to(self, device: torch.device | str) -> TeacherCache:
        """This cache with its tensors on ``device`` (checked again there, once)."""
        names = ("ids", "logprobs", "tail_logmass", "entropy", "offsets")
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in names})

    def batch(
        self,
        index: torch.Tensor,
        device: torch.device | str | None = None,
        tokens: int | None = None,
        counts: torch.Tensor | None = None,
    ) -> TeacherTopK:
        """The ``TeacherTopK`` of rows ``index`` (B,) in batch order: their labelled tokens, row-major, on
        ``device``. tokens: the batch's count of labelled tokens when the caller knows it (the collator's
        ``label_index``), with counts (B,) per row: then the rows are gathered on the cache's device with
        no host read, and a count that differs from the cache's sets the result's ``mismatch`` flag; None:
        counted from the offsets (a host read)."""
        off = self.offsets.to(index.device)
        index = index.long()
        starts, lengths = off[index], off[index + 1] - off[index]
        ends = lengths.cumsum(0)
        total, mismatch = ends[-1:].sum(), None  # 0 for no rows
        if tokens is None:
            tokens = int(total)
        else:
            mismatch = (total != tokens) | (counts is not None and (lengths != counts.to(off.device)).any())
        pos = torch.arange(tokens, device=index.device)
        row = torch.searchsorted(ends, pos, right=True).clamp_max(max(len(index) - 1, 0))
        sel = (starts[row] + pos - (ends - lengths)[row]).clamp(0, max(self.ids.shape[0] - 1, 0))
        sel = sel.to(self.ids.device)
        return TeacherTopK(
            self.ids[sel].long().to(device),
            self.logprobs[sel].to(device),
            self.entropy[sel].to(device),
            self.vocab_size,
            self.temperature,
            self.tau,
            self.tail_logmass[sel].to(device),
            None if mismatch is None else mismatch.to(device),
            self.samples,
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
        """Write the cache as one safetensors file (atomically); returns the path. It replaces only an eakd
        teacher cache (``replaceable_cache``: FileExistsError for any other file there)."""
        from safetensors.torch import save_file  # the llm extra; importing eakd.llm needs only torch

        path = cache_path(path)
        replaceable_cache(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": CACHE_FORMAT,
            "kind": KINDS[bool(self.samples)],
            "vocab_size": str(self.vocab_size),
            "top_k": str(self.top_k),
            "samples": str(self.samples),
            "seed": str(self.seed),
            "temperature": repr(self.temperature),
            "tau": repr(self.tau),
            "teacher": self.teacher,
            "rows_fingerprint": self.rows_fingerprint,
        }
        names = ("ids", "logprobs", "tail_logmass", "entropy", "offsets")
        tensors = {k: getattr(self, k) for k in names}
        tmp = path.with_name(path.name + ".partial")
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)  # nothing stray when writing failed
        return path

    @classmethod
    def load(cls, path: str | Path) -> TeacherCache:
        """Read a cache written by ``save``. A missing path or a directory is a FileNotFoundError; a file
        that is not safetensors, of another format, or inconsistent (``__post_init__``) a ValueError."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise FileNotFoundError(
                f"teacher cache {path} {what}; write one with `eakd llm cache CONFIG --out FILE`"
            )
        fix = "write it again with `eakd llm cache`"
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            t = load_file(str(path))
        except SafetensorError as err:
            raise ValueError(f"{path} is not a readable safetensors file ({err}); {fix}") from None
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(
                f"{path} is not an eakd teacher cache of format {CACHE_FORMAT!r} (found "
                f"{meta.get('format')!r}); {fix}"
            )
        try:
            if meta["kind"] != KINDS[int(meta["samples"]) > 0]:
                raise ValueError(f"kind {meta['kind']!r} does not match samples {meta['samples']}")
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
                int(meta["samples"]),
                int(meta["seed"]),
            )
        except KeyError as err:
            raise ValueError(f"teacher cache {path} lacks {err}; {fix}") from None
        except ValueError as err:
            raise ValueError(f"teacher cache {path} is inconsistent: {err}; {fix}") from None

    def coverage(self) -> torch.Tensor:
        """(M,) teacher probability mass kept exactly per token (the top k - samples), at the cache's
        temperature."""
        return -torch.expm1(self.tail_logmass.double()).float()


@torch.no_grad()
def build_cache(
    teacher: torch.nn.Module,
    rows: Sequence[dict[str, list[int]]],
    pad_token_id: int,
    top_k: int = TOP_K,
    temperature: float = 1.0,
    tau: float = 2.0,
    batch_size: int = CACHE_BATCH,
    vocab_size: int | None = None,
    teacher_name: str = "",
    progress: ProgressHook = QUIET,
    samples: int = 0,
    seed: int = 0,
) -> TeacherCache:
    """Run the teacher once over the encoded rows and keep, per labelled token (the position predicting a
    label), the top-k log-probs at ``temperature`` and the full entropy at ``tau``; with ``samples`` > 0
    (a sampled cache) the top k - samples, then ``samples`` tokens drawn from the rest of the teacher at
    ``temperature`` with their log-probs (``eakd.llm.sparse``; the draws depend on ``seed`` and the rows
    only, not on ``batch_size`` or the device).

    vocab_size: the real vocabulary when the lm_head has padding rows (rows beyond it are dropped).
    Each batch is reported to ``progress`` ("cache", ``eakd.llm.progress``).
    """
    if not rows:
        raise ValueError("no rows to cache")
    if top_k < 1 or batch_size < 1 or not 0 <= samples <= top_k:
        raise ValueError(
            f"top_k and batch_size must be >= 1 and samples in [0, top_k], got {top_k}, {batch_size}, "
            f"{samples}"
        )
    generator = torch.Generator().manual_seed(seed)
    device = next(teacher.parameters()).device
    v = vocab_size
    ids, logprobs, tails, ents, counts = [], [], [], [], []
    starts = range(0, len(rows), batch_size)
    for start in starts:
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
        idx, lp, tail = sparse_rows(
            full, top_k, samples, draw_uniforms(valid.sum(1).tolist(), samples, generator)
        )
        ids.append(idx.to(torch.int32).cpu())
        logprobs.append(lp.cpu())
        tails.append(tail.cpu())
        ents.append(entropy(z, tau).cpu())
        counts.append(valid.sum(1).cpu())
        progress.note("cache")
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
        samples,
        seed,
    )
