"""What the offline teacher cache buys: one distillation step (loss forward + backward through the student)
with the teacher online against the same step reading a top-k cache, side by side in one process.

SmolLM2-135M-Instruct teacher -> 2-layer student on chatterbot-corpus batches (as in the LLM demo). The two
variants alternate on the same batches; the script prints the median of the per-batch time ratios and the
one-time cost of writing the cache for those rows.

    python benchmarks/llm_cache_speed.py --batches 8 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from tempfile import TemporaryDirectory

import torch

from eakd.llm.cache import build_cache
from eakd.llm.cli import read_run_config
from eakd.llm.data import collate
from eakd.llm.models import load_teacher, make_student
from eakd.llm.run import split_rows, training_args
from eakd.llm.trainer import EAKDTrainer


def _step_seconds(trainer: EAKDTrainer, batch: dict[str, torch.Tensor]) -> float:
    start = time.perf_counter()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    seconds = time.perf_counter() - start
    trainer.model.zero_grad(set_to_none=True)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top-k", type=int, default=64)
    a = p.parse_args()
    with TemporaryDirectory() as tmp:
        cfg = read_run_config(None, [f"train.output_dir={tmp}"])
        args = training_args(cfg)
        teacher, tokenizer = load_teacher(cfg.model.teacher)
        student = make_student(teacher, cfg.model.student_layers, init="layers")
        rows = split_rows(cfg, tokenizer)[0][: a.batches * a.batch_size]
        start = time.perf_counter()
        cache = build_cache(teacher, rows, tokenizer.pad_token_id, a.top_k, tau=args.tau)
        cache_s = time.perf_counter() - start
        online = EAKDTrainer(model=student, teacher=teacher, args=args)
        offline = EAKDTrainer(model=student, teacher=None, teacher_cache=cache, args=args)
        attached = cache.attach(rows)
        batches = [
            collate(attached[i : i + a.batch_size], tokenizer.pad_token_id)
            for i in range(0, len(rows), a.batch_size)
        ]
        _step_seconds(online, batches[0])  # warm-up
        _step_seconds(offline, batches[0])
        t_on, t_off = [], []
        for _ in range(a.repeats):
            for batch in batches:
                t_on.append(_step_seconds(online, batch))
                t_off.append(_step_seconds(offline, batch))
    ratios = [off / on for on, off in zip(t_on, t_off, strict=True)]
    tokens = cache.ids.shape[0]
    print(
        f"{len(rows)} rows, {tokens} labelled tokens, batch {a.batch_size}, top-{a.top_k}, torch threads "
        f"{torch.get_num_threads()}"
    )
    print("| variant | median s/step | offline / online (median of paired ratios) |")
    print("|---|---|---|")
    print(f"| teacher online | {statistics.median(t_on):.2f} | 1 |")
    print(f"| teacher cache | {statistics.median(t_off):.2f} | {statistics.median(ratios):.2f} |")
    print(
        f"writing the cache for these rows: {cache_s:.1f} s ({cache_s / len(batches):.2f} s per batch, once)"
    )


if __name__ == "__main__":
    main()
