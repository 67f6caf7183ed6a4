"""The LLM study: SmolLM2-135M-Instruct teacher -> 2-layer student (~35M) on chatterbot-corpus, with SFT
only, KD (forward KL), reverse KL and EA-KD (forward KL + EA weights, tau 2), same budget, ROUGE-L and
perplexity on 100 held-out prompts. It is ``eakd demo llm`` with a larger default budget and the teacher
run once into a top-64 cache shared by all twelve runs (``--teacher-cache``); every option of the demo is
accepted and overrides these defaults.

    python benchmarks/llm_study.py --steps 150 --seeds 0 1 2
"""

from __future__ import annotations

import sys

from eakd.llm.cli import demo

DEFAULTS = ["--steps", "150", "--seeds", "0", "1", "2", "--out", "runs/llm-study", "--teacher-cache"]

if __name__ == "__main__":
    sys.exit(demo([*DEFAULTS, *sys.argv[1:]]))
