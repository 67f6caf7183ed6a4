"""The LLM study: SmolLM2-135M-Instruct teacher -> 2-layer student (~35M) on chatterbot-corpus, with SFT
only, KD (forward KL), reverse KL and EA-KD (forward KL + EA weights, tau 2), same budget, ROUGE-L and
perplexity on 100 held-out prompts. It is ``eakd llm demo`` with a larger default budget and the teacher
run once into a top-64 cache shared by all twelve runs (``--teacher-cache``); every option of the demo is
accepted and overrides these defaults.

    python benchmarks/llm_study.py --steps 150 --seeds 0 1 2

As in the paper, the study reported in docs/llm.md distils a teacher first fine-tuned on the task
(the 30 layers of SmolLM2 trained with cross-entropy on the same training rows, reading the untuned
teacher's cache so that its frozen copy never runs):

    eakd llm cache configs/llm/base.yaml --out runs/llm/teacher_cache_k64.safetensors
    eakd llm train configs/llm/sft.yaml model.student_layers=30 train.max_steps=150 \
        train.learning_rate=1e-4 train.output_dir=runs/llm/teacher-sft \
        model.teacher_cache=runs/llm/teacher_cache_k64.safetensors
    python benchmarks/llm_study.py --steps 150 model.teacher=runs/llm/teacher-sft/student
"""

from __future__ import annotations

import sys

from eakd.llm.cli import demo

DEFAULTS = ["--steps", "150", "--seeds", "0", "1", "2", "--out", "runs/llm-study", "--teacher-cache"]

if __name__ == "__main__":
    sys.exit(demo([*DEFAULTS, *sys.argv[1:]]))
