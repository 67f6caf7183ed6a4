"""LLM distillation with EA-KD: the token-level loss (``settings``; dense in ``dense``, chunked with the
lm_head in ``chunked``, their row math in ``rows``), the offline teacher cache (``cache``), models, data, a
``transformers.Trainer`` subclass and evaluation. Only the loss and the cache's ``TeacherTopK`` are
imported here (torch only); ``eakd.llm.trainer``, ``models``, ``data``, ``evaluate`` and ``run`` need the
``llm`` extra (transformers, gguf, safetensors, rouge-score, datasets)."""

from eakd.llm.cache import TeacherTopK
from eakd.llm.chunked import chunked_distill_loss
from eakd.llm.dense import distill_loss_from_logits
from eakd.llm.settings import TokenLossOutput, TokenLossSettings
from eakd.llm.sparse import topk_log_probs

__all__ = [
    "TeacherTopK",
    "TokenLossOutput",
    "TokenLossSettings",
    "chunked_distill_loss",
    "distill_loss_from_logits",
    "topk_log_probs",
]
