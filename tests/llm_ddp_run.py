"""EAKDTrainer on the tiny Llama in one process or several (torchrun, gloo on CPU); the main process saves
the student's final parameters to OUT/student.pt. Run by test_llm_ddp.py:

    python llm_ddp_run.py OUT MODE PER_DEVICE_BATCH [FSDP_VERSION [LOSS]]

MODE: online | offline. FSDP_VERSION: 1 or 2 wraps the student with FSDP (full_shard); LOSS: fused | dense.
"""

from __future__ import annotations

import os
import sys
from functools import partial

import torch
from tiny_llm import PAIRS, make_teacher, make_tokenizer

from eakd.llm.cache import build_cache
from eakd.llm.data import collate, encode_pairs
from eakd.llm.models import make_student
from eakd.llm.trainer import EAKDConfig, EAKDTrainer


def main(out: str, mode: str, per_device: int, fsdp_version: str = "", loss: str = "fused") -> None:
    tokenizer = make_tokenizer()
    teacher = make_teacher(tokenizer)
    rows = encode_pairs(tokenizer, PAIRS[:4])  # one global batch of 4 per step: every step sees all rows
    student = make_student(teacher, num_layers=2, init="layers")
    cache = None
    if mode == "offline":
        cache = build_cache(teacher, rows, tokenizer.pad_token_id, top_k=8, progress=False)
    args = EAKDConfig(
        output_dir=out,
        per_device_train_batch_size=per_device,
        max_steps=3,
        learning_rate=0.5,
        optim="sgd",  # not Adam: a wrong loss scale must change the result
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        chunk_size=8,
        ce_weight=0.5,
        logging_steps=1,
        fsdp="full_shard" if fsdp_version else "",
        fsdp_config={"version": int(fsdp_version)} if fsdp_version else None,
        chunked=loss == "fused",
        tau=2.0,
        seed=0,
    )
    trainer = EAKDTrainer(
        model=student,
        teacher=None if cache else teacher,
        teacher_cache=cache,
        args=args,
        train_dataset=cache.attach(rows) if cache else rows,
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
    )
    trainer.train()
    state = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        torch.save(state, f"{out}/student.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:])
