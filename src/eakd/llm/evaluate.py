"""Evaluation of a causal LM on held-out instruction pairs: ROUGE-L of its generated responses against the
references (rouge-score, as the EA-KD paper reports; sampled at temperature 1 over several sampling seeds,
as DistiLLM / MiniLLM evaluate, and greedy), perplexity on the reference response tokens, and the
student's per-token KL to the teacher and teacher-forced top-1 agreement, split by teacher confidence."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer

from eakd.llm.data import IGNORE_INDEX, Pair, collate, encode_pairs, prompt_text
from eakd.llm.progress import QUIET, ProgressHook


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    progress: ProgressHook = QUIET,
) -> list[str]:
    """Responses to ``prompts`` (chat template applied), greedy by default; special tokens stripped. Each
    batch is reported to ``progress`` ("generate", ``eakd.llm.progress``)."""
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    torch.manual_seed(seed)
    texts = []
    try:
        for i in range(0, len(prompts), batch_size):
            batch = [prompt_text(tokenizer, p) for p in prompts[i : i + batch_size]]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            texts += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
            progress.note("generate")
    finally:
        tokenizer.padding_side = side
    return texts


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure x 100 (stemmed), the paper's metric."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"need as many predictions as references (> 0): {len(predictions)} vs {len(references)}"
        )
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return 100.0 * sum(scores) / len(scores)


@torch.no_grad()
def perplexity(
    model: Any,
    tokenizer: Any,
    pairs: list[Pair],
    max_length: int = 256,
    batch_size: int = 16,
    progress: ProgressHook = QUIET,
) -> float:
    """exp(mean cross-entropy in nats per response token) of ``model`` on the reference responses; each
    batch reported to ``progress`` ("forward")."""
    model.eval()
    rows = encode_pairs(tokenizer, pairs, max_length)
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size], tokenizer.pad_token_id)
        logits = model(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
        ).logits
        labels = batch["labels"][:, 1:].to(model.device)
        total += F.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), labels.flatten(), reduction="sum", ignore_index=IGNORE_INDEX
        ).item()
        count += int((labels != IGNORE_INDEX).sum())
        progress.note("forward")
    return math.exp(total / max(count, 1))


def evaluate(
    model: Any,
    tokenizer: Any,
    pairs: list[Pair],
    max_new_tokens: int = 64,
    max_length: int = 256,
    batch_size: int = 16,
    sampling_seeds: int = 5,
    temperature: float = 1.0,
    progress: ProgressHook = QUIET,
) -> dict[str, Any]:
    """ROUGE-L (x100) of generated responses and perplexity on the reference responses over ``pairs``:
    {"rougeL": the mean over ``sampling_seeds`` sampled decodings (seeds 0..k-1, ``temperature``, top-p 1;
    the primary metric), "rougeL_seeds": each of them, "rougeL_greedy", "perplexity", "n", "samples": the
    first three (prompt, reference, greedy output)}. Its batches are reported to ``progress``."""
    prompts, refs = [p["prompt"] for p in pairs], [p["response"] for p in pairs]
    gen = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "progress": progress}
    greedy = generate(model, tokenizer, prompts, **gen)
    sampled = [
        rouge_l(
            generate(model, tokenizer, prompts, do_sample=True, temperature=temperature, seed=k, **gen), refs
        )
        for k in range(sampling_seeds)
    ]
    return {
        "rougeL": sum(sampled) / len(sampled) if sampled else float("nan"),
        "rougeL_seeds": sampled,
        "rougeL_greedy": rouge_l(greedy, refs),
        "perplexity": perplexity(model, tokenizer, pairs, max_length, batch_size, progress),
        "n": len(pairs),
        "samples": [(p["prompt"], p["response"], o) for p, o in zip(pairs[:3], greedy, strict=False)],
    }


@torch.no_grad()
def teacher_agreement(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    pairs: list[Pair],
    max_length: int = 256,
    batch_size: int = 16,
    confident: float = 0.9,
    progress: ProgressHook = QUIET,
) -> dict[str, Any]:
    """Teacher-forced on the reference responses (response tokens only, T = 1): the mean per-token
    KL(teacher || student) in nats and the top-1 agreement (student argmax = teacher argmax), over all
    tokens ("all") and split by the teacher's confidence: p_max > ``confident`` ("confident") or not
    ("rest"); each {"tokens", "kl", "top1"} (nan for no token). Each batch is reported to ``progress``
    ("agreement")."""
    student.eval()
    rows = encode_pairs(tokenizer, pairs, max_length)
    kls, agree, sure = [], [], []
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size], tokenizer.pad_token_id)
        feed = {k: batch[k].to(student.device) for k in ("input_ids", "attention_mask")}
        mask = batch["labels"][:, 1:].to(student.device) != IGNORE_INDEX
        log_q = torch.log_softmax(student(**feed).logits[:, :-1][mask].float(), -1)
        log_p = torch.log_softmax(teacher(**feed).logits[:, :-1][mask].float(), -1)
        kls.append((log_p.exp() * (log_p - log_q)).sum(-1))
        agree.append(log_q.argmax(-1) == log_p.argmax(-1))
        sure.append(log_p.max(-1).values.exp() > confident)
        progress.note("agreement")
    kl, top1, high = torch.cat(kls), torch.cat(agree).float(), torch.cat(sure)

    def part(keep: torch.Tensor) -> dict[str, float]:
        n = int(keep.sum())
        nan = float("nan")
        return {
            "tokens": n,
            "kl": float(kl[keep].mean()) if n else nan,
            "top1": float(top1[keep].mean()) if n else nan,
        }

    return {"all": part(torch.ones_like(high)), "confident": part(high), "rest": part(~high)}
