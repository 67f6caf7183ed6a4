"""``EAKDTrainer``: a ``transformers.Trainer`` that distils a frozen teacher into the student with the
token-level EA-KD loss (chunked with the lm_head by default), plus its config dataclass ``EAKDConfig``.

Works wherever Trainer does (``accelerate launch`` / torchrun for DDP and FSDP2, tested with 2 CPU
processes): the student is wrapped as usual, the teacher is frozen, in eval mode, on each process's device,
or replaced by an offline teacher cache. See docs/llm.md for FSDP1 and DeepSpeed. The run's logs go
through ``eakd.llm.callbacks.RunLogCallback`` (metrics.csv, the engine's weight diagnostics); a loss term
that goes NaN or inf stops the run before its next log or checkpoint (``eakd.llm.callbacks.FiniteGuard``).
With ``lmbda`` > 0 or ``seq_kd`` a micro-batch's responses are generated before the loss (GKD's on-policy and
mixed data, ``eakd.llm.onpolicy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments

from eakd.llm.cache import TeacherCache, TeacherTopK
from eakd.llm.callbacks import FiniteGuard, RunLogCallback
from eakd.llm.chunked import chunked_distill_loss
from eakd.llm.data import IGNORE_INDEX
from eakd.llm.dense import distill_loss_from_logits
from eakd.llm.onpolicy import generated_batch, sampling_seed, student_generates
from eakd.llm.settings import GenerationSettings, TokenLossOutput, TokenLossSettings

RENAMED = {"fused_loss": "chunked"}  # old train keys, refused with their new name


@dataclass
class EAKDConfig(TrainingArguments, TokenLossSettings, GenerationSettings):
    """TrainingArguments plus the loss and generation settings (declared once, with their help, in
    ``TokenLossSettings`` and ``GenerationSettings``) and the runner's own settings below."""

    chunked: bool = field(
        default=True,
        metadata={
            "help": "the loss from the last hidden states and lm_head, chunk_size rows at a time, never the "
            "(B*T, V) logits (works under DDP and FSDP2); False: full logits (FSDP1, DeepSpeed ZeRO-3)"
        },
    )
    chunk_size: int = field(default=512, metadata={"help": "rows per chunk of the chunked loss"})
    vocab_size: int | None = field(
        default=None, metadata={"help": "the real vocabulary when the lm_heads differ only by padding rows"}
    )
    diag_samples: int = field(
        default=256, metadata={"help": "raw token samples kept per logging step for the diagnostics"}
    )
    # the FiniteGuard stops a run with a non-finite loss; Trainer's filter would read the loss every step
    logging_nan_inf_filter: bool = False

    def __post_init__(self) -> None:
        TrainingArguments.__post_init__(self)
        TokenLossSettings.__post_init__(self)  # bad divergence / weighting names fail when built
        GenerationSettings.__post_init__(self)

    def loss_settings(self) -> TokenLossSettings:
        """The per-token loss settings of this config."""
        return TokenLossSettings.of(self)

    def generation(self) -> GenerationSettings:
        """Where the responses of the training batches come from (GKD's lmbda and seq_kd)."""
        return GenerationSettings.of(self)


def token_payload(out: TokenLossOutput, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """The diagnostics payload of one micro-batch: weights, h_t, h_s (when computed) and per_sample (the
    unweighted per-token divergence), each (M,) at the M valid tokens: ``valid`` (N,) bool or (M,) flat
    positions."""
    named = {"weights": out.weights, "h_t": out.h_t, "h_s": out.h_s, "per_sample": out.per_token}
    return {k: v[valid] for k, v in named.items() if v is not None}


class EAKDTrainer(Trainer):
    """Trainer whose loss is ``kd_weight * EA-weighted divergence + ce_weight * CE`` against ``teacher``.

    model: the student (a causal LM). teacher: a causal LM with the same tokenizer (frozen here), or None
    with ``teacher_cache`` (offline mode: ``eakd.llm.cache.TeacherCache``, rows from its ``attach``; the
    teacher never runs). args: an ``EAKDConfig``. Every other Trainer argument (train_dataset,
    data_collator, callbacks, ...) passes through. Batches need input_ids, attention_mask and labels
    (IGNORE_INDEX = -100 on prompt and padding); with ``label_index`` (``eakd.llm.data.collate`` adds it)
    a training step reads nothing back to the host: the input checks are device-side flags that the
    ``FiniteGuard`` reads at logging and checkpoint steps. With ``args.lmbda`` > 0 or ``args.seq_kd`` the
    responses of a micro-batch are generated first (``get_batch_samples``); generation needs the teacher
    online (not a cache) and a pad token (``processing_class``'s, else the student's config's).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        teacher: PreTrainedModel | None,
        args: EAKDConfig,
        teacher_cache: TeacherCache | None = None,
        **kwargs: Any,
    ):
        if not isinstance(args, EAKDConfig):
            raise TypeError(f"EAKDTrainer needs an EAKDConfig, got {type(args).__name__}")
        if (teacher is None) == (teacher_cache is None):
            raise ValueError("give EAKDTrainer either a teacher model or a teacher_cache (not both)")
        self.generation = args.generation()
        if self.generation.generates() and teacher_cache is not None:
            raise ValueError(
                "a teacher cache holds the teacher on the dataset's responses only: lmbda > 0 or seq_kd "
                "(generated responses) need the teacher online"
            )
        super().__init__(model=model, args=args, **kwargs)
        self.loss_settings = args.loss_settings()
        pads = [
            getattr(x, "pad_token_id", None)
            for x in (self.processing_class, model.generation_config, model.config)
        ]
        self.pad_token_id = next((p for p in pads if p is not None), None)
        if self.generation.generates() and (self.pad_token_id is None or args.ignore_index != IGNORE_INDEX):
            raise ValueError(
                "generated responses need a pad token (pass processing_class=tokenizer, or set the student's "
                f"config.pad_token_id) and ignore_index {IGNORE_INDEX}, got {self.pad_token_id} and "
                f"{args.ignore_index}"
            )
        self.teacher = None if teacher is None else teacher.to(self.args.device).eval().requires_grad_(False)
        # on the device once, so that each batch's rows are gathered there (no host read per step)
        self.teacher_cache = None if teacher_cache is None else teacher_cache.to(self.args.device)
        self.run_log = RunLogCallback(args.diag_samples)
        self.add_callback(self.run_log)
        self.guard = FiniteGuard()
        self.add_callback(self.guard)
        self._terms = torch.zeros(2, device=self.args.device)  # kd, ce summed since the last training log
        self._terms_from: int | None = None  # the global step they were first added at

    def _set_signature_columns_if_needed(self) -> None:
        """Keeps the rows' ``cache_index`` through Trainer's removal of columns the model does not take."""
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and "cache_index" not in self._signature_columns:
            self._signature_columns.append("cache_index")

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        """The micro-batches of one optimiser step and their valid-token count (Trainer's), with
        generation on each micro-batch's responses replaced first (``_responses``) and counted after."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not self.generation.generates():
            return batches, num_items
        new = [self._responses(batch, i) for i, batch in enumerate(batches)]
        if all(a is b for a, b in zip(new, batches, strict=True)):  # the same on every process
            return batches, num_items
        return new, self._get_num_items_in_batch(new, device)

    def _responses(self, batch: dict[str, torch.Tensor], micro: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``micro`` of this step: responses by the student (drawn with probability lmbda),
        else by the teacher (seq_kd), else as given."""
        g, step, seed = self.generation, self.state.global_step, self.args.seed
        if student_generates(seed, step, micro, g.lmbda):
            model = self.accelerator.unwrap_model(self.model)
        elif g.seq_kd:
            model = self.teacher
        else:
            return batch
        return generated_batch(
            model,
            batch,
            g,
            self.pad_token_id,
            sampling_seed(seed, step, micro, self.args.process_index),
            synced_gpus=self.is_fsdp_enabled,
            use_cache=not self.args.gradient_checkpointing,
        )

    def _cached_teacher(self, inputs: dict[str, torch.Tensor]) -> TeacherTopK:
        if "cache_index" not in inputs:
            raise ValueError("offline mode needs batches with cache_index: rows from TeacherCache.attach")
        assert self.teacher_cache is not None
        labels, index = inputs["labels"], inputs.get("label_index")
        if index is None:  # counted from the cache's offsets: a host read
            return self.teacher_cache.batch(inputs["cache_index"], labels.device)
        counts = (labels[:, 1:] != self.loss_settings.ignore_index).sum(1)
        return self.teacher_cache.batch(inputs["cache_index"], labels.device, index.numel(), counts)

    def _distill(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], num_items: Any
    ) -> tuple[TokenLossOutput, Any]:
        args: EAKDConfig = self.args  # type: ignore[assignment]
        feed = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask")}
        labels = inputs["labels"][:, 1:]
        topk = None if self.teacher is not None else self._cached_teacher(inputs)
        if not args.chunked:
            outputs = model(**feed)
            t_logits = None
            if self.teacher is not None:
                with torch.no_grad():
                    t_logits = self.teacher(**feed).logits[:, :-1]
            out = distill_loss_from_logits(
                outputs.logits[:, :-1],
                t_logits,
                labels,
                self.loss_settings,
                num_items,
                args.vocab_size,
                teacher_topk=topk,
                label_index=inputs.get("label_index"),
                defer=True,  # no host sync per step: the guard reads the terms' flags at logging steps
            )
            return out, outputs
        outputs = model(**feed, output_hidden_states=True, logits_to_keep=1)
        t_hidden = t_weight = t_bias = None
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(**feed, output_hidden_states=True, logits_to_keep=1)
            t_hidden = t_out.hidden_states[-1][:, :-1]
            t_head = self.teacher.get_output_embeddings()
            t_weight, t_bias = t_head.weight, getattr(t_head, "bias", None)
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        out = chunked_distill_loss(
            outputs.hidden_states[-1][:, :-1],
            head.weight,
            labels,
            t_hidden,
            t_weight,
            student_bias=getattr(head, "bias", None),
            teacher_bias=t_bias,
            teacher_topk=topk,
            settings=self.loss_settings,
            num_items_in_batch=num_items,
            vocab_size=args.vocab_size,
            chunk_size=args.chunk_size,
            label_index=inputs.get("label_index"),
            defer=True,
        )
        return out, outputs

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The distillation loss of one micro-batch, normalised by ``num_items_in_batch`` when the Trainer
        gives it (valid tokens over all accumulated micro-batches), else by this batch's valid tokens."""
        args: EAKDConfig = self.args  # type: ignore[assignment]
        out, outputs = self._distill(model, inputs, num_items_in_batch)
        scale = 1.0
        if (
            num_items_in_batch is not None
            and args.average_tokens_across_devices
            and self.accelerator.num_processes > 1
        ):
            scale = float(self.accelerator.num_processes)  # the count was summed over processes; DDP averages
        if model.training:
            self.guard.update(out.flags(), self.state.global_step + 1)
            # kd, ce scaled as the Trainer reports the loss: the sum over a step's micro-batches is the step's
            # term (each micro-batch divided by the accumulation steps when it was normalised on its own)
            ga = (
                1
                if num_items_in_batch is not None
                else getattr(self, "current_gradient_accumulation_steps", 1)
            )
            self._terms += torch.stack([out.kd, out.ce]).to(self._terms.device) * (scale / ga)
            if self._terms_from is None:
                self._terms_from = self.state.global_step
            logging = (self.state.global_step + 1) % max(int(args.logging_steps), 1) == 0
            if logging and self.run_log.diag is not None:  # main process only
                valid = inputs.get("label_index")
                if valid is None:
                    valid = inputs["labels"][:, 1:].reshape(-1) != self.loss_settings.ignore_index
                self.run_log.add(token_payload(out, valid))  # logging steps only: it syncs with the device
        loss = out.loss * scale
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds ``loss_kd`` and ``loss_ce`` to training logs: the mean per optimiser step since the last
        training log, over all processes, on the scale of the Trainer's ``loss``."""
        if "loss" in logs:
            steps = max(self.state.global_step - (self._terms_from or 0), 1)
            kd, ce = (self.accelerator.gather(self._terms[None]).mean(0) / steps).tolist()
            logs = {**logs, "loss_kd": kd, "loss_ce": ce}
            self._terms.zero_()
            self._terms_from = None
        super().log(logs, *args, **kwargs)
