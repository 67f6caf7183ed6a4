"""LLM distillation with EA-KD: the token-level loss (dense or chunked fused-linear), models, data,
a ``transformers.Trainer`` subclass and evaluation. Only the loss is imported here; the rest lives in
``eakd.llm.trainer``, ``eakd.llm.models``, ``eakd.llm.data`` and ``eakd.llm.evaluate`` (they need the
``llm`` extra: transformers, gguf, rouge-score)."""

from eakd.llm.loss import (
    TeacherTopK,
    TokenLossOutput,
    TokenLossSettings,
    distill_loss_from_logits,
    fused_linear_distill_loss,
    topk_log_probs,
)

__all__ = [
    "TeacherTopK",
    "TokenLossOutput",
    "TokenLossSettings",
    "distill_loss_from_logits",
    "fused_linear_distill_loss",
    "topk_log_probs",
]
