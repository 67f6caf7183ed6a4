"""LLM distillation with EA-KD: the token-level loss (``settings``; dense in ``dense``, chunked and fused
with the lm_head in ``chunked``), the offline teacher cache (``cache``), models, data, a
``transformers.Trainer`` subclass and evaluation. Only the loss and the cache's ``TeacherTopK`` are
imported here (torch only); ``eakd.llm.trainer``, ``models``, ``data``, ``evaluate`` and ``run`` need the
``llm`` extra (transformers, gguf, safetensors, rouge-score, datasets)."""

from eakd.llm.cache import TeacherTopK, topk_log_probs
from eakd.llm.chunked import fused_linear_distill_loss
from eakd.llm.dense import distill_loss_from_logits
from eakd.llm.settings import TokenLossOutput, TokenLossSettings

__all__ = [
    "TeacherTopK",
    "TokenLossOutput",
    "TokenLossSettings",
    "distill_loss_from_logits",
    "fused_linear_distill_loss",
    "topk_log_probs",
]
