"""Language-model metrics without generation, on fixed-length token blocks (``eakd.llm.text``): the
student's perplexity on the next tokens, its per-token KL(teacher || student) and its top-1 agreement
with the teacher, over all predicted tokens and split by the teacher's confidence (its max probability
p_max in fixed bins, ``CONFIDENCE``).

The teacher is read once per evaluation set as its final (normed) hidden states (``teacher_states``):
its logits are those states times its lm_head, exactly what its forward pass gives, so every later
evaluation costs the student's forward and one matmul, not the teacher's 30 layers."""

from __future__ import annotations

import math
from typing import Any

import torch

# teacher p_max bins, fixed before the study: low [0, 0.5), mid [0.5, 0.9), high [0.9, 1]
CONFIDENCE = {"low": (0.0, 0.5), "mid": (0.5, 0.9), "high": (0.9, 1.01)}


def _ids(rows: list[dict[str, list[int]]]) -> torch.Tensor:
    """(n, T) int64 input ids of equal-length blocks."""
    lengths = {len(r["input_ids"]) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"blocks must share one length, got lengths {sorted(lengths)}")
    return torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)


@torch.no_grad()
def teacher_states(teacher: Any, rows: list[dict[str, list[int]]], batch_size: int = 8) -> torch.Tensor:
    """(n, T - 1, H) float32 on the CPU: the teacher's final hidden states (after its last norm, the
    lm_head's input) at the positions that predict the blocks' next tokens."""
    teacher.eval()
    ids, device, out = _ids(rows), next(teacher.parameters()).device, []
    for i in range(0, len(ids), batch_size):
        hidden = teacher(
            input_ids=ids[i : i + batch_size].to(device), output_hidden_states=True
        ).hidden_states
        out.append(hidden[-1][:, :-1].float().cpu())
    return torch.cat(out)


def _summary(
    nll: torch.Tensor, kl: torch.Tensor, top1: torch.Tensor, t_nll: torch.Tensor
) -> dict[str, float]:
    n = nll.numel()
    if not n:
        return {"tokens": 0, "ppl": math.nan, "kl": math.nan, "top1": math.nan, "teacher_ppl": math.nan}
    return {
        "tokens": n,
        "ppl": math.exp(float(nll.double().mean())),
        "kl": float(kl.double().mean()),
        "top1": float(top1.double().mean()),
        "teacher_ppl": math.exp(float(t_nll.double().mean())),
    }


@torch.no_grad()
def lm_metrics(
    student: Any,
    teacher_head: torch.nn.Module,
    states: torch.Tensor,
    rows: list[dict[str, list[int]]],
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """The student on the blocks ``rows`` against the teacher whose final hidden states are ``states``
    ((n, T - 1, H), ``teacher_states``) and whose lm_head is ``teacher_head``; T = 1, the full vocabulary,
    all math float32. Per predicted token (n * (T - 1) of them): the student's negative log-likelihood
    of the next token (nats), KL(teacher || student) (nats), top-1 agreement (student argmax = teacher
    argmax), the teacher's own negative log-likelihood. Returns {"all", "low", "mid", "high"} (bins of the
    teacher's p_max, ``CONFIDENCE``), each {"tokens", "ppl" (exp of the mean nll), "kl", "top1",
    "teacher_ppl"} (nan for an empty bin)."""
    was_training = student.training
    student.eval()
    ids, device = _ids(rows), next(student.parameters()).device
    head_device = next(teacher_head.parameters()).device
    if states.shape[:2] != (ids.shape[0], ids.shape[1] - 1):
        raise ValueError(f"teacher states {tuple(states.shape)} do not match blocks {tuple(ids.shape)}")
    parts: dict[str, list[torch.Tensor]] = {"nll": [], "kl": [], "top1": [], "t_nll": [], "p_max": []}
    for i in range(0, len(ids), batch_size):
        batch = ids[i : i + batch_size].to(device)
        target = batch[:, 1:].reshape(-1)
        log_q = torch.log_softmax(student(input_ids=batch).logits[:, :-1].float(), -1).flatten(0, 1)
        t_logits = teacher_head(states[i : i + batch_size].to(head_device)).float().to(device)
        log_p = torch.log_softmax(t_logits, -1).flatten(0, 1)
        parts["nll"].append(-log_q.gather(1, target[:, None])[:, 0])
        parts["t_nll"].append(-log_p.gather(1, target[:, None])[:, 0])
        parts["kl"].append((log_p.exp() * (log_p - log_q)).sum(-1))
        parts["top1"].append((log_q.argmax(-1) == log_p.argmax(-1)).float())
        parts["p_max"].append(log_p.max(-1).values.exp())
    student.train(was_training)
    cat = {k: torch.cat(v).cpu() for k, v in parts.items()}
    keys = ("nll", "kl", "top1", "t_nll")
    out = {"all": _summary(*(cat[k] for k in keys))}
    for name, (lo, hi) in CONFIDENCE.items():
        keep = (cat["p_max"] >= lo) & (cat["p_max"] < hi)
        out[name] = _summary(*(cat[k][keep] for k in keys))
    return out
