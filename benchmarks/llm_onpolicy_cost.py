"""What on-policy data costs per step on this machine: a teacher-forced distillation step (loss forward +
backward, the teacher online) against an on-policy one (lmbda = 1: the student generates the responses
from the batch's prompts, then the same step on them), side by side in one process on the same batches.

SmolLM2-135M-Instruct teacher -> the study's 6-layer student (teacher layers, no warm start: it rarely
stops early, so its responses run to max_new_tokens, the worst case) on chatterbot-corpus batches of 8,
sampled at the study's temperature 1. The two variants alternate per batch; the result holds each pair's
times, the generated tokens and the medians of the paired ratios (the machine is shared: ratios, not
absolute times, are what transfer).

    python benchmarks/llm_onpolicy_cost.py --batches 4 --repeats 2 --out results/llm_onpolicy_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any


def table(result: dict[str, Any]) -> str:
    """The markdown table of a results file of this script (``scripts/tables.py``)."""
    from eakd.study import code_label

    pairs, a = result["pairs"], result["settings"]
    med = lambda key: statistics.median(p[key] for p in pairs)  # noqa: E731
    ratios = [(p["generate_s"] + p["onpolicy_step_s"]) / p["teacher_forced_s"] for p in pairs]
    ratio = statistics.median(ratios)
    gen_share = statistics.median(p["generate_s"] / (p["generate_s"] + p["onpolicy_step_s"]) for p in pairs)
    prov, load, cpus = result["provenance"], result["loadavg"], result["provenance"]["machine"]["cpus"]
    per_response = lambda key: statistics.mean(p[key] for p in pairs) / a["batch_size"]  # noqa: E731
    return "\n".join([
        "| step (batch of 8, teacher online) | median s | / teacher-forced (paired: median (min-max)) |",
        "|---|---|---|",
        f"| teacher-forced (dataset responses) | {med('teacher_forced_s'):.2f} | 1 |",
        f"| on-policy (lmbda 1): generation | {med('generate_s'):.2f} | |",
        f"| on-policy (lmbda 1): step on the generated responses | {med('onpolicy_step_s'):.2f} | |",
        f"| on-policy (lmbda 1): total | {med('generate_s') + med('onpolicy_step_s'):.2f} | {ratio:.1f} "
        f"({min(ratios):.1f}-{max(ratios):.1f}) |",
        "",
        f"_Measured {prov['date']} on {cpus} CPU cores shared with other jobs (load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end), {a['threads']} torch thread(s), torch "
        f"{prov['machine']['torch']}, code {code_label(prov)}: {len(pairs)} pairs ({a['batches']} batches x "
        f"{a['repeats']} repeats), max_new_tokens {a['max_new_tokens']} at temperature {a['temperature']:g}; "
        f"the student generated {per_response('generated_tokens'):.0f} "
        f"tokens per response on average, the dataset's responses have "
        f"{per_response('dataset_tokens'):.0f}; generation is "
        f"{100 * gen_share:.0f} % of an on-policy step (median). With lmbda < 1 a step costs on average "
        f"(1 - lmbda) x 1 + lmbda x {ratio:.1f} teacher-forced steps._",
    ])  # fmt: skip


def main() -> None:
    import torch

    from eakd.llm.cli import read_run_config
    from eakd.llm.data import IGNORE_INDEX, collate
    from eakd.llm.models import load_teacher, make_student
    from eakd.llm.run import split_rows, training_args
    from eakd.llm.trainer import EAKDTrainer
    from eakd.study import provenance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="results file (JSON)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    with TemporaryDirectory() as tmp:
        train = [f"train.output_dir={tmp}", "train.lmbda=1.0", f"train.max_new_tokens={a.max_new_tokens}",
                 "train.gen_temperature=1.0"]  # fmt: skip
        cfg = read_run_config(None, train)
        args = training_args(cfg)
        teacher, tokenizer = load_teacher(cfg.model.teacher)
        student = make_student(teacher, cfg.model.student_layers, init="layers").train()
        rows = split_rows(cfg, tokenizer)[0][: a.batches * a.batch_size]
        batches = [
            collate(rows[i : i + a.batch_size], tokenizer.pad_token_id)
            for i in range(0, len(rows), a.batch_size)
        ]
        trainer = EAKDTrainer(model=student, teacher=teacher, args=args, processing_class=tokenizer)

        def step(batch: dict[str, torch.Tensor]) -> float:
            begin = time.perf_counter()
            trainer.compute_loss(student, batch).backward()
            student.zero_grad(set_to_none=True)
            return time.perf_counter() - begin

        step(batches[0])  # warm-up
        pairs = []
        for repeat in range(a.repeats):
            for i, batch in enumerate(batches):
                forced = step(batch)
                begin = time.perf_counter()
                generated = trainer._responses(batch, i)  # the Trainer's own replacement of the responses
                gen_s = time.perf_counter() - begin
                count = lambda b: int((b["labels"] != IGNORE_INDEX).sum())  # noqa: E731
                pairs.append({
                    "repeat": repeat, "batch": i, "teacher_forced_s": forced, "generate_s": gen_s,
                    "onpolicy_step_s": step(generated), "generated_tokens": count(generated),
                    "dataset_tokens": count(batch),
                })  # fmt: skip
                print(json.dumps(pairs[-1]), flush=True)
    result = {
        "settings": {
            "batches": a.batches,
            "batch_size": a.batch_size,
            "repeats": a.repeats,
            "max_new_tokens": a.max_new_tokens,
            "temperature": args.gen_temperature,
            "threads": a.threads,
            "student_layers": cfg.model.student_layers,
        },
        "pairs": pairs,
        "wall_s": time.perf_counter() - start,
        "loadavg": [load_start, os.getloadavg()[0]],
        "provenance": provenance(),
    }
    print(table(result))
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
