"""What EA costs on top of the distillation loss, eager and fused: forward+backward time in one process.

Rows: KD and DKD at (64, 100) and (512, 1000) (T 4), and token-level forward KL at (4096, 32000) (T 1),
each at the paper's entropy temperature (tau 3 for KD/DKD, tau 2 for the LLM study's FKL) and at
tau == T. Contenders, interleaved repeat by repeat: the unweighted loss and EA-weighted loss, each eager
(``eakd.DistillLoss`` / the token loss + ``Policy.compute``) and fused (``eakd.losses.fused``, compiled),
and the EA-weighted loss as a user gets it by default (``fused="auto"``: ``DistillLoss``'s default, and
for the token loss the path ``TokenLossSettings``'s default takes). Columns: median ms of each (the JSON
also has the min and max), the ratios EA / unweighted (eager), fused EA / eager unweighted, fused EA /
fused unweighted, default EA / eager EA (must not exceed 1 beyond noise), and the exp passes over the
(N, K) logits each variant makes, forward + backward (see ``exp_passes``). The naive floor is 2 forward
(student and teacher softmax at T) and 2 more for EA at tau != T (student and teacher at tau); the fused
kernels get EA at 2 when tau / T is a small fraction (one exp serves both temperatures,
``shared_powers``), KD, DKD and FKL alike. Absolute times on a shared machine mean little; the ratios
come from one process, the contenders interleaved in a shuffled order. ``--clock cpu`` times the
process's CPU time instead of the wall clock: with ``--threads 1`` it does not count the time other jobs
hold the cores.

``--crossover`` instead times the EA-weighted loss eager, fused and by default (``fused="auto"``) on a
ladder of shapes (KD, DKD, token forward KL) and prints, per shape, fused / eager, the path the default
takes there (``eakd.losses.fused_rule.use_fused``, from ``AUTO_MIN_NUMEL``) and the default's time over
eager's, which must not exceed 1 beyond noise.

    python benchmarks/loss_overhead.py [--repeats 30] [--threads 2] [--device cpu|cuda] [--clock wall|cpu]
        [--dtype float32|bfloat16] [--small] [--crossover] [--results results/loss_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from eakd import DistillLoss
from eakd.llm.settings import TokenLossSettings
from eakd.losses.fused import fused_token_terms, shared_powers
from eakd.losses.fused_rule import AUTO_MIN_NUMEL, use_fused
from eakd.losses.reduce import weighted_mean
from eakd.losses.token import forward_kl
from eakd.study import provenance
from eakd.weighting import get_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _render_loss_overhead import render

VARIANTS = ("eager_none", "eager_ea", "fused_none", "fused_ea", "auto_ea")  # auto: the default path


EXP_OPS = {"exp", "_log_softmax", "_softmax", "logsumexp", "_log_softmax_backward_data", "logaddexp"}


class _ExpCounter(TorchDispatchMode):
    """Counts the aten ops that exponentiate a whole (N, K) tensor (``EXP_OPS``)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if name in EXP_OPS and isinstance(args[0], torch.Tensor) and args[0].numel() == self.numel:
            self.count += 1
        return func(*args, **(kwargs or {}))


def exp_passes(variant: str, shared: bool, step: Callable[[], None], numel: int) -> int:
    """Exp passes over the (N, K) logits of one forward+backward (of the four forced variants). Eager:
    counted (``_ExpCounter``). Fused:
    the compiled kernel's, read off its inductor code: one exp per softmax in one forward kernel, 2 at T
    and 2 more at tau for EA unless ``shared`` (tau == T, or tau / T a small fraction: ``shared_powers``);
    the backward reads the forward's saved exps (two (N, K) buffers) and computes no exp."""
    if variant.startswith("fused"):
        return 2 + (2 if variant.endswith("ea") and not shared else 0)
    with _ExpCounter(numel) as counter:
        step()
    return counter.count


def make_steps(
    method: str, zs: torch.Tensor, zt: torch.Tensor, target: torch.Tensor, temperature: float, tau: float
) -> tuple[dict[str, Callable[[], None]], str]:
    """One forward+backward closure per variant, and the path ("fused" / "eager") the default takes."""
    if method == "fkl":
        policy = get_policy("ea", tau=tau)
        assert policy is not None
        default = TokenLossSettings(temperature=temperature, tau=tau).compiled(zs.numel())

        def token(variant: str) -> Callable[[], None]:
            def step() -> None:
                zs.grad = None
                if variant == "eager_none":
                    loss = weighted_mean(forward_kl(zs, zt, temperature))
                elif variant == "eager_ea":
                    loss = weighted_mean(forward_kl(zs, zt, temperature), policy(zs, zt))
                else:
                    t = None if variant == "fused_none" else tau
                    values, h_s, h_t = fused_token_terms("fkl", zs, zt, temperature=temperature, tau=t)
                    w = None if h_t is None else policy.from_entropies(h_s, h_t, zs.shape[-1])
                    loss = weighted_mean(values, w)
                loss.backward()

            return step

        steps = {v: token(v) for v in VARIANTS[:-1]}
        return {**steps, "auto_ea": token("fused_ea" if default else "eager_ea")}, path(default)

    def logit(variant: str) -> tuple[Callable[[], None], DistillLoss]:
        weighting = "none" if variant.endswith("none") else "ea"
        kw: dict[str, Any] = {} if weighting == "none" else {"tau": tau}
        if not variant.startswith("auto"):  # auto: DistillLoss's default
            kw["fused"] = variant.startswith("fused")
        loss = DistillLoss(method, weighting, ce_weight=0.0, sync_checks=False, temperature=temperature, **kw)

        def step() -> None:
            zs.grad = None
            sum(loss(zs, zt, target).values()).backward()

        return step, loss

    built = {v: logit(v) for v in VARIANTS}
    auto = built["auto_ea"][1]
    return {v: fn for v, (fn, _) in built.items()}, path(use_fused(auto.fused, auto.fusable, zs.numel()))


def path(fused: bool) -> str:
    return "fused" if fused else "eager"


def bench(
    steps: dict[str, Callable[[], None]], repeats: int, sync: Callable[[], None], clock: Callable[[], float]
) -> dict[str, list[float]]:
    """Seconds per call of each step by ``clock``, one per repeat, interleaving the contenders each repeat
    in a shuffled order (seeded; after 3 warm-ups, which also compile the fused kernels). Not a rotating
    order: there each contender keeps its predecessor, whose cache and allocator state skews sub-ms calls
    (the default, eager at small shapes, measured slower than the same eager code when it followed the
    compiled pass)."""
    for fn in steps.values():
        for _ in range(3):
            fn()
    sync()
    names, order = list(steps), random.Random(0)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name in order.sample(names, len(names)):
            t0 = clock()
            steps[name]()
            sync()
            times[name].append(clock() - t0)
    return times


def cases(small: bool) -> list[tuple[str, int, int, float, float]]:
    """(method, N, K, T, tau at tau != T) rows; --small shrinks the shapes for a quick smoke run."""
    if small:
        return [("kd", 64, 100, 4.0, 3.0), ("dkd", 64, 100, 4.0, 3.0), ("fkl", 256, 2000, 1.0, 2.0)]
    return [
        ("kd", 64, 100, 4.0, 3.0),
        ("dkd", 64, 100, 4.0, 3.0),
        ("kd", 512, 1000, 4.0, 3.0),
        ("dkd", 512, 1000, 4.0, 3.0),
        ("fkl", 4096, 32000, 1.0, 2.0),
    ]


LADDER = ((64, 100), (128, 200), (256, 250), (256, 500), (512, 500), (512, 1000))


def crossover(repeats: int, sync: Callable[[], None], clock: Callable[[], float]) -> list[dict[str, Any]]:
    """Median ms of the EA-weighted loss eager, fused and by default on ``LADDER`` for KD, DKD (T 4, tau 3)
    and token forward KL (T 1, tau 2), and the path ``fused="auto"`` takes; each row printed as measured."""
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"fused='auto' takes the compiled pass from N*K >= {AUTO_MIN_NUMEL}")
    for method, temperature, tau in (("kd", 4.0, 3.0), ("dkd", 4.0, 3.0), ("fkl", 1.0, 2.0)):
        for n, k in LADDER:
            zs = torch.randn(n, k, generator=g).requires_grad_()
            zt, target = torch.randn(n, k, generator=g) * 2, torch.randint(0, k, (n,), generator=g)
            steps, auto = make_steps(method, zs, zt, target, temperature, tau)
            times = bench({v: steps[v] for v in ("eager_ea", "fused_ea", "auto_ea")}, repeats, sync, clock)
            t = {v: statistics.median(ts) * 1e3 for v, ts in times.items()}
            row = {"method": method, "n": n, "k": k, "ms": t, "auto": auto,
                   "fused_over_eager": t["fused_ea"] / t["eager_ea"],
                   "default_over_eager": t["auto_ea"] / t["eager_ea"]}  # fmt: skip
            print(f"{method:4} {n:4} x {k:5}: fused / eager {row['fused_over_eager']:.2f}, auto takes "
                  f"{row['auto']:5}: default / eager {row['default_over_eager']:.2f}")  # fmt: skip
            rows.append(row)
    worst = max(r["default_over_eager"] for r in rows)
    print(f"default (auto) over eager, worst shape: {worst:.2f} (1 = as fast as eager)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time")
    parser.add_argument("--small", action="store_true", help="small shapes: a quick smoke run")
    parser.add_argument("--crossover", action="store_true", help="eager vs fused EA on a ladder of shapes")
    parser.add_argument("--results", type=Path, help="save the rows with provenance as JSON")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    load_start, t_start = os.getloadavg(), time.perf_counter()
    if args.crossover:
        result = {"provenance": provenance(), "settings": {k: str(v) for k, v in vars(args).items()},
                  "auto_min_numel": AUTO_MIN_NUMEL, "load_start": load_start,
                  "rows": crossover(args.repeats, sync, clock), "load_end": os.getloadavg()}  # fmt: skip
        print(f"load average (1 min) {load_start[0]:.1f} at start, {result['load_end'][0]:.1f} at the end")
        if args.results:
            args.results.write_text(json.dumps(result, indent=2) + "\n")
        return
    g = torch.Generator().manual_seed(0)
    rows = []
    for method, n, k, temperature, tau_paper in cases(args.small):
        for tau in (tau_paper, temperature):
            zs = torch.randn(n, k, generator=g).to(device, dtype).requires_grad_()
            zt = (torch.randn(n, k, generator=g) * 2).to(device, dtype)
            target = torch.randint(0, k, (n,), generator=g).to(device)
            reps = max(5, args.repeats // 5) if n * k > 10**7 and device.type == "cpu" else args.repeats
            steps, auto = make_steps(method, zs, zt, target, temperature, tau)
            times = bench(steps, reps, sync, clock)
            t = {name: statistics.median(ts) for name, ts in times.items()}
            shared = shared_powers(temperature, tau) is not None
            row = {
                "method": method, "n": n, "k": k, "temperature": temperature, "tau": tau, "repeats": reps,
                "ms": {v: t[v] * 1e3 for v in VARIANTS},
                "ms_min_max": {v: [min(times[v]) * 1e3, max(times[v]) * 1e3] for v in VARIANTS},
                "exp_passes": {v: exp_passes(v, shared, steps[v], n * k) for v in VARIANTS[:-1]},
                "auto": auto,
                "ea_over_none_eager": t["eager_ea"] / t["eager_none"],
                "fused_ea_over_eager_none": t["fused_ea"] / t["eager_none"],
                "fused_ea_over_fused_none": t["fused_ea"] / t["fused_none"],
                "default_ea_over_eager_ea": t["auto_ea"] / t["eager_ea"],
            }  # fmt: skip
            rows.append(row)
            print(render({"rows": [row]}).splitlines()[-1], flush=True)
    result = {
        "provenance": provenance(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t_start,
        "rows": rows,
    }
    print()
    print(render(result))
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
