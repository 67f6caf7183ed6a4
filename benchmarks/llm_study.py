"""The LLM study: SmolLM2-135M-Instruct teacher -> 2-layer student (~35M) on chatterbot-corpus, with SFT
only, KD (forward KL), reverse KL and EA-KD (forward KL + EA weights, tau 2), same budget, ROUGE-L and
perplexity on 100 held-out prompts. ``eakd demo llm`` is the same study at a smaller default budget.

    python benchmarks/llm_study.py --steps 150 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time

from eakd.llm.run import load_run_config
from eakd.llm.study import METHODS, run_study, table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config", default=None, help="a run config (configs/llm/base.yaml layout); default built-in"
    )
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--eval-size", type=int, default=100)
    p.add_argument("--eval-teacher", action="store_true", help="also evaluate the teacher (slow on a CPU)")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--out", default="runs/llm-study")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    a = p.parse_args()
    cfg = load_run_config(
        a.config,
        [
            f"train.max_steps={a.steps}",
            f"data.eval_size={a.eval_size}",
            f"train.warmup_steps={a.warmup_steps}",
            f"eval.max_new_tokens={a.max_new_tokens}",
            *a.overrides,
        ],
    )
    start = time.perf_counter()
    rows = run_study(cfg, a.methods, a.seeds, a.out, a.eval_teacher)
    print(table(rows))
    runs = len(a.methods) * len(a.seeds)
    print(f"\n{runs} runs, {a.steps} steps each, in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
