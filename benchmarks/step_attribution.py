"""EA's share of a whole training step by attribution: the weight path's operations in a torch.profiler trace.

The library marks the weight path (``Policy.compute``, ``entropies``, ``from_entropies`` of
eakd.weighting) with the profiler range ``eakd.weights``. A profiled step is wrapped in one more range,
so that Python time between operations counts too. EA's cost = the self CPU time of every operation
inside an ``eakd.weights`` range (the ranges' own time included); the step's = the self CPU time of
every operation of the trace, all threads (on CUDA also the kernel time, attributed to the operations
that launched them). One fraction per profiled step; reported as the median, min and max over the steps
after warm-up. No wall-time subtraction of two noisy steps is involved. Not attributed: the weights'
O(N) use in the reduction (one multiply of (N,) values inside the loss).

The fused cases (``TokenLossSettings.fused``) compute both entropies inside the compiled loss kernel
(``eakd.losses.fused.fused_token_terms``), so ``eakd.weights`` holds only the O(N) rule. There EA's cost =
the ``eakd.weights`` operations + the fused loss's extra self CPU time with EA over the same loss
unweighted: the same step (same model, batch and optimiser, only the loss settings swapped) is profiled
with weighting "ea" and "none", interleaved pair by pair (alternating which runs first), and the fused
loss's operations are those inside the range ``eakd.compiled_pass`` (eakd.llm.rows, around the fused
pass) and the compiled kernel's backward (``CompiledFunctionBackward``; nothing else in the step is
compiled), outside ``eakd.weights``. This part is a difference of two kernel times from two steps (not of
whole steps), so it carries their noise: the reported median takes the difference of the two kernels'
medians (``fused_extra_cpu_ms``) over the EA steps' median, the min and max are those of the pairs.

Cases:
  classification  ResNet32x4 -> ResNet8x4, batch 64 x 3x32x32, KD T 4 + EA tau 3, through the engine's
                  ClassificationTask.training_step (benchmarks/step_overhead.py's setup), SGD step
  llm-online      SmolLM2-135M-Instruct teacher (offline copy, scripts/fetch.py smollm2) -> 6-layer
                  student, 2 x 128 tokens, chunked fused-linear loss, FKL + EA tau 2, one
                  EAKDTrainer.training_step + AdamW step; the teacher runs in the step
  llm-cache       the same against an offline top-k teacher cache (k 64; eakd.llm.cache): no teacher forward
  llm-online-fused, llm-cache-fused   the same two with the fused loss (``fused: true``), attributed as above
--small: tiny sizes for a smoke run (ResNet8x4 -> ResNet8x4, batch 8; a random 4-layer Llama of V 2048).
--llm-weights random: SmolLM2-135M's architecture randomly initialised (no offline copy needed; the
times do not depend on the weights, the top-k cache's values do not change its cost).
Targets: <= 1 % of the classification step, <= 5 % of an LLM step.

    python benchmarks/step_attribution.py [--device cpu|cuda] [--amp] [--steps 5] [--threads 1]
        [--cases classification llm-online llm-cache llm-online-fused llm-cache-fused] [--small]
        [--results results/step_attribution.json [--merge]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from step_overhead import classification_setup, train_step
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from eakd.llm.rows import COMPILED_RANGE as FUSED_RANGE
from eakd.study import provenance
from eakd.weighting import WEIGHTS_RANGE

CASES = ("classification", "llm-online", "llm-cache", "llm-online-fused", "llm-cache-fused")
TARGETS = {"classification": 0.01, **{name: 0.05 for name in CASES[1:]}}
STEP_RANGE = "benchmark.step"
# the compiled fused kernel's backward, which chunked.py's forward runs outside FUSED_RANGE
FUSED_BACKWARD = "autograd::engine::evaluate_function: CompiledFunctionBackward"


def _inside(event: Any, name: str) -> bool:
    """Whether ``event`` or one of its CPU ancestors is the range ``name``."""
    while event is not None:
        if event.name == name:
            return True
        event = event.cpu_parent
    return False


def _cpu(events: Any) -> list[Any]:
    return [e for e in events if e.device_type == DeviceType.CPU]


def attribute(events: Any, cuda: bool) -> dict[str, float]:
    """EA's and the whole trace's self CPU time in ms (with ``cuda`` also the kernel time, attributed to
    the operations that launched them), and EA's fractions, from ``prof.events()``."""
    cpu = _cpu(events)
    ea = [e for e in cpu if _inside(e, WEIGHTS_RANGE)]
    if not ea:
        raise RuntimeError(f"no {WEIGHTS_RANGE!r} range in the trace: the step did not compute EA weights")
    out = {
        "ea_cpu_ms": sum(e.self_cpu_time_total for e in ea) / 1e3,
        "step_cpu_ms": sum(e.self_cpu_time_total for e in cpu) / 1e3,
    }
    out["cpu_fraction"] = out["ea_cpu_ms"] / out["step_cpu_ms"]
    if cuda:
        out["ea_device_ms"] = sum(e.self_device_time_total for e in ea) / 1e3
        out["step_device_ms"] = sum(e.self_device_time_total for e in cpu) / 1e3
        out["device_fraction"] = out["ea_device_ms"] / max(out["step_device_ms"], 1e-9)
    return out


def fused_loss_times(events: Any, cuda: bool) -> dict[str, float]:
    """Self CPU time in ms (with ``cuda`` also the kernel time) of the fused loss's operations: inside
    ``FUSED_RANGE`` or the compiled kernel's backward, outside ``eakd.weights``."""
    ops = [
        e
        for e in _cpu(events)
        if (_inside(e, FUSED_RANGE) or _inside(e, FUSED_BACKWARD)) and not _inside(e, WEIGHTS_RANGE)
    ]
    if not ops:
        raise RuntimeError(f"no {FUSED_RANGE!r} range in the trace: the step did not run the fused loss")
    out = {"cpu_ms": sum(e.self_cpu_time_total for e in ops) / 1e3}
    if cuda:
        out["device_ms"] = sum(e.self_device_time_total for e in ops) / 1e3
    return out


def attribute_fused(ea_events: Any, none_events: Any, cuda: bool) -> dict[str, float]:
    """``attribute`` of the EA step, with EA's time = its ``eakd.weights`` operations + the fused loss's
    time in the EA step - in the unweighted step (``fused_loss_times``); the parts are kept."""
    out = attribute(ea_events, cuda)
    clocks = [("cpu", "cpu_ms", "self_cpu_time_total")]
    if cuda:
        clocks.append(("device", "device_ms", "self_device_time_total"))
    with_ea, without = fused_loss_times(ea_events, cuda), fused_loss_times(none_events, cuda)
    for clock, key, attr in clocks:
        out[f"weights_{clock}_ms"] = out[f"ea_{clock}_ms"]
        out[f"fused_ea_{clock}_ms"], out[f"fused_none_{clock}_ms"] = with_ea[key], without[key]
        out[f"none_step_{clock}_ms"] = sum(getattr(e, attr) for e in _cpu(none_events)) / 1e3
        out[f"ea_{clock}_ms"] += with_ea[key] - without[key]
        out[f"{clock}_fraction"] = out[f"ea_{clock}_ms"] / max(out[f"step_{clock}_ms"], 1e-9)
    return out


def _profiled(step: Callable[[], None], cuda: bool) -> Any:
    """``prof.events()`` of one ``step`` run inside the ``STEP_RANGE`` range."""
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        with record_function(STEP_RANGE):
            step()
        if cuda:
            torch.cuda.synchronize()
    return prof.events()


def profile_steps(step: Callable[[], None], warmup: int, steps: int, cuda: bool) -> list[dict[str, float]]:
    """``warmup`` plain steps, one profiled step discarded (the profiler's own start-up), then ``steps``
    profiled steps, each attributed on its own."""
    for _ in range(warmup):
        step()
    out = []
    for i in range(steps + 1):
        events = _profiled(step, cuda)
        if i > 0:
            out.append(attribute(events, cuda))
    return out


def profile_pairs(step: Callable[[str], None], warmup: int, steps: int, cuda: bool) -> list[dict[str, float]]:
    """The fused cases: ``warmup`` plain steps of each weighting ("ea", "none"), one profiled pair
    discarded, then ``steps`` profiled pairs, the two interleaved (alternating which runs first), each pair
    attributed by ``attribute_fused``."""
    for _ in range(warmup):
        step("ea")
        step("none")
    out = []
    for i in range(steps + 1):
        order = ("ea", "none") if i % 2 else ("none", "ea")
        events = {w: _profiled(partial(step, w), cuda) for w in order}
        if i > 0:
            out.append(attribute_fused(events["ea"], events["none"], cuda))
    return out


def summary(per_step: list[dict[str, float]]) -> dict[str, Any]:
    """Median / min / max of each measure over the profiled steps, and the steps themselves. The fused
    cases' EA time and share: median = from the difference of the fused loss's medians with EA and
    without (``fused_extra_*_ms``; robust to one pair disturbed by other jobs), min / max = of the pairs."""
    keys = [k for k in per_step[0] if all(k in s for s in per_step)]
    stats = {
        k: {
            "median": statistics.median(s[k] for s in per_step),
            "min": min(s[k] for s in per_step),
            "max": max(s[k] for s in per_step),
        }
        for k in keys
    }
    extra = {}
    for clock in ("cpu", "device"):
        if f"fused_ea_{clock}_ms" not in stats:
            continue
        diff = stats[f"fused_ea_{clock}_ms"]["median"] - stats[f"fused_none_{clock}_ms"]["median"]
        extra[f"fused_extra_{clock}_ms"] = diff
        stats[f"ea_{clock}_ms"]["median"] = stats[f"weights_{clock}_ms"]["median"] + diff
        step = max(stats[f"step_{clock}_ms"]["median"], 1e-9)
        stats[f"{clock}_fraction"]["median"] = stats[f"ea_{clock}_ms"]["median"] / step
    return {**stats, **extra, "per_step": per_step}


def autocast_of(device: torch.device, amp: bool) -> Callable[[], AbstractContextManager[Any]] | None:
    """A fresh bf16 autocast context per call, or None without --amp."""
    return partial(torch.autocast, device.type, dtype=torch.bfloat16) if amp else None


def classification_step(device: torch.device, small: bool, amp: bool) -> tuple[Callable[[], None], str]:
    """The EA-KD classification step and its description."""
    pair = ("resnet8x4", "resnet8x4") if small else ("resnet32x4", "resnet8x4")
    batch_size = 8 if small else 64
    tasks, optimizer, batch = classification_setup(device, batch_size, *pair)
    autocast = autocast_of(device, amp)

    def step() -> None:
        train_step(tasks["ea-kd"], optimizer, batch, autocast() if autocast else None)

    what = f"{pair[0]} -> {pair[1]}, batch {batch_size} x 3x32x32, KD T 4 + EA tau 3"
    return step, what


# SmolLM2-135M's architecture (its config.json), for --llm-weights random where the offline copy is absent
SMOLLM2_SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
}
TINY_SHAPE = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def random_llama(shape: dict[str, Any]) -> Any:
    """A frozen, seeded, randomly initialised Llama of ``shape`` (timing does not depend on the weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**shape, pad_token_id=0)).eval().requires_grad_(False)


def _rows(n: int, length: int, vocab: int, prompt: int) -> list[dict[str, list[int]]]:
    """``n`` seeded rows of random token ids, the first ``prompt`` of each unlabelled."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


@contextmanager
def llm_step(
    device: torch.device, small: bool, amp: bool, cached: bool, threads: int, pretrained: bool, fused: bool
) -> Iterator[tuple[Callable[..., None], str]]:
    """The EA-KD LLM step (EAKDTrainer.training_step + optimiser step) and its description; the step takes
    the weighting, "ea" (default) or "none" (the same trainer, model, optimiser and batch; only the loss
    settings differ). fused: the fused loss (``TokenLossSettings.fused``)."""
    from eakd.llm.cache import build_cache
    from eakd.llm.data import collate
    from eakd.llm.models import SMOLLM2, load_teacher, make_student
    from eakd.llm.trainer import EAKDConfig, EAKDTrainer

    if small:
        teacher, layers, name = random_llama(TINY_SHAPE), 2, "random 4-layer Llama (V 2048, H 64)"
        batch, length = 2, 32
    else:
        if pretrained:
            teacher, name = load_teacher(SMOLLM2)[0], "SmolLM2-135M-Instruct"
        else:
            teacher, name = random_llama(SMOLLM2_SHAPE), "SmolLM2-135M-shaped random Llama"
        layers, batch, length = 6, 2, 128
    teacher.to(device)
    student = make_student(teacher, num_layers=layers, init="layers")
    rows = _rows(batch, length, teacher.config.vocab_size, length // 4)
    cache = None
    if cached:
        cache = build_cache(teacher, rows, pad_token_id=0, top_k=64, tau=2.0)
        rows = cache.attach(rows)
    inputs = collate(rows, pad_token_id=0)
    with tempfile.TemporaryDirectory() as out:
        args = EAKDConfig(
            output_dir=out,
            report_to=[],
            use_cpu=device.type == "cpu",
            bf16=amp,
            per_device_train_batch_size=batch,
            logging_steps=10**9,  # no diagnostics payload in the profiled steps
            save_strategy="no",
            divergence="fkl",
            weighting="ea",
            tau=2.0,
            chunk_size=512,
            fused=fused,
            torch_compile=False,  # nothing but the fused loss is compiled (FUSED_BACKWARD)
        )
        trainer = EAKDTrainer(
            model=student, teacher=None if cached else teacher, args=args, teacher_cache=cache
        )
        if threads > 0:
            torch.set_num_threads(threads)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which is not run here
        settings = {"ea": trainer.loss_settings, "none": replace(trainer.loss_settings, weighting=None)}

        def step(weighting: str = "ea") -> None:
            trainer.loss_settings = settings[weighting]
            trainer.training_step(trainer.model, inputs)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        teacher_text = "top-k cache (k 64)" if cached else "online teacher"
        what = (
            f"{name} -> {layers}-layer student, {batch} x {length} tokens, chunked FKL + EA tau 2, "
            f"{'fused loss, ' if fused else ''}{teacher_text}, AdamW"
        )
        yield step, what


def render_line(name: str, case: dict[str, Any]) -> str:
    f = case["cpu_fraction"]
    line = (
        f"  {name:<16} EA {case['ea_cpu_ms']['median']:8.2f} ms of {case['step_cpu_ms']['median']:9.1f} ms "
        f"self CPU: {100 * f['median']:.3f} % (min {100 * f['min']:.3f}, max {100 * f['max']:.3f}; "
        f"target <= {100 * case['target']:.0f} %)"
    )
    if "fused_extra_cpu_ms" in case:
        kernel = (case[f"fused_{w}_cpu_ms"]["median"] for w in ("ea", "none"))
        line += "; eakd.weights {:.2f} ms, fused loss {:.2f} ms with EA, {:.2f} ms without (medians)".format(
            case["weights_cpu_ms"]["median"], *kernel
        )
    return line


def merge_error(old: dict[str, Any], setup: dict[str, Any]) -> str | None:
    """Why this run's cases, of ``setup`` (device, amp, small), cannot join the results ``old``, or None."""
    for key, value in setup.items():
        if old.get(key) != value:
            return f"--merge: the results were measured with {key} {old.get(key)!r}, this run with {value!r}"
    return None


def merged(old: dict[str, Any], run: dict[str, Any], cases: dict[str, Any]) -> dict[str, Any]:
    """The results ``old`` with ``cases`` added (replacing those of the same names), each carrying its own
    ``run`` (settings, provenance, load); the other cases and the file's run are kept."""
    return {**old, "cases": {**old["cases"], **{name: {**c, "run": run} for name, c in cases.items()}}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true", help="autocast bf16 (CPU and CUDA)")
    p.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--steps", type=int, default=5, help="profiled steps per case after warm-up (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="plain steps first (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--llm-weights",
        default="pretrained",
        choices=["pretrained", "random"],
        help="the LLM teacher: the offline SmolLM2-135M (scripts/fetch.py smollm2), or its shape, random",
    )
    p.add_argument("--results", help="write the results JSON here (e.g. results/step_attribution.json)")
    p.add_argument(
        "--merge",
        action="store_true",
        help="add this run's cases to an existing --results file (each with its own run record); "
        "same device, amp and sizes",
    )
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("step_attribution.py: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if a.steps < 1 or a.warmup < 0:
        print("step_attribution.py: --steps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    setup = {"device": a.device, "amp": "bf16" if a.amp else None, "small": a.small}
    old = None
    if a.merge:
        if not a.results or not Path(a.results).exists():
            print("step_attribution.py: --merge needs an existing --results file", file=sys.stderr)
            return 2
        old = json.loads(Path(a.results).read_text())
        if error := merge_error(old, setup):
            print(f"step_attribution.py: {error}", file=sys.stderr)
            return 2
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    load_start, start = os.getloadavg(), time.perf_counter()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    cases: dict[str, Any] = {}
    for name in a.cases:
        if name == "classification":
            step, what = classification_step(device, a.small, a.amp)
            per_step = profile_steps(step, a.warmup, a.steps, cuda)
        else:
            pretrained, fused = a.llm_weights == "pretrained", name.endswith("-fused")
            cached = name.startswith("llm-cache")
            with llm_step(device, a.small, a.amp, cached, a.threads, pretrained, fused) as (step, what):
                per_step = (profile_pairs if fused else profile_steps)(step, a.warmup, a.steps, cuda)
        cases[name] = {"what": what, "target": TARGETS[name], **summary(per_step)}
        print(render_line(name, cases[name]), flush=True)
    run = {
        **setup,
        "threads": torch.get_num_threads(),
        "steps": a.steps,
        "warmup": a.warmup,
        "wall_s": time.perf_counter() - start,
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "provenance": provenance(),
    }
    if a.results:
        result = {**run, "cases": cases} if old is None else merged(old, run, cases)
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)
        Path(a.results).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
