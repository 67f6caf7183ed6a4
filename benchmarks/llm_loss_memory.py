"""Peak memory and time of the token distillation loss, forward + backward, V = 49152, H = 576 (SmolLM2).

Variants, each in its own process (so one's allocations never hide another's):
  dense       materialised (B*T, V) logits, same math as ours: JSD(0.5) + EA weights + CE
  chunked-ea  eakd.llm.chunked_distill_loss, same settings (the EA-KD loss)
  chunked     the same without the EA weights
  liger       Liger-Kernel's LigerFusedLinearJSDLoss (chunked, CPU, uncompiled), same beta and weights

Inputs (hidden states, lm_heads) in --dtype (float32 default, or bfloat16: matmuls in bf16, reductions
in float32), on the CPU (or --device cuda). Peak = the process's peak resident memory during one forward +
backward, minus its resident memory once the inputs exist (Linux: VmHWM is reset through
/proc/self/clear_refs); on CUDA, torch.cuda.max_memory_allocated above the inputs. Time = median of
--repeats further runs. A dense run predicted to need more than 60% of the available memory is skipped
and its figure extrapolated linearly from the smaller size (marked "~").

    python benchmarks/llm_loss_memory.py                    # B*T in {2048, 8192}
    python benchmarks/llm_loss_memory.py --sizes 2048 --repeats 1
    python benchmarks/llm_loss_memory.py --device cuda --dtype bfloat16 --sizes 8192 32768 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

V, H = 49152, 576
VARIANTS = ["dense", "chunked-ea", "chunked", "liger"]


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(
    variant: str, rows: int, repeats: int, chunk_size: int, device: str, dtype: str
) -> dict[str, float | str | int]:
    """Build the inputs, measure one forward+backward's peak memory, then time ``repeats`` more."""
    import torch

    from eakd.llm import TokenLossSettings, chunked_distill_loss, distill_loss_from_logits

    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    hidden = (torch.randn(rows, H, generator=g)).to(device, dt).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.02).to(device, dt).requires_grad_()
    t_hidden = torch.randn(rows, H, generator=g).to(device, dt)
    t_weight = (torch.randn(V, H, generator=g) * 0.02).to(device, dt)
    labels = torch.randint(0, V, (rows,), generator=g).to(device)
    labels[: rows // 8] = -100
    ea = TokenLossSettings(divergence="jsd", beta=0.5, weighting="ea", tau=2.0, kd_weight=0.5, ce_weight=0.5)
    plain = TokenLossSettings(divergence="jsd", beta=0.5, weighting=None, kd_weight=0.5, ce_weight=0.5)

    if variant == "dense":

        def step() -> torch.Tensor:
            return distill_loss_from_logits(hidden @ weight.t(), t_hidden @ t_weight.t(), labels, ea).loss
    elif variant in ("chunked-ea", "chunked"):
        settings = ea if variant == "chunked-ea" else plain

        def step() -> torch.Tensor:
            return chunked_distill_loss(
                hidden, weight, labels, t_hidden, t_weight, settings=settings, chunk_size=chunk_size
            ).loss
    elif variant == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        liger = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.5, compiled=False, chunk_size=chunk_size
        )

        def step() -> torch.Tensor:
            return liger(hidden, weight, t_hidden, t_weight, labels)
    else:
        raise ValueError(f"unknown variant {variant!r}")

    def run_once() -> float:
        hidden.grad = weight.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        first = run_once()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _status("VmRSS")
        first = run_once()
        peak = _status("VmHWM") - base
    times = [run_once() for _ in range(repeats)] or [first]
    return {
        "variant": variant,
        "rows": rows,
        "device": device,
        "dtype": dtype,
        "peak_mb": peak / 2**20,
        "time_s": statistics.median(times),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192], help="B*T rows")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=512, help="rows per chunk, ours and Liger's")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="of the inputs")
    p.add_argument("--worker", nargs=2, metavar=("VARIANT", "ROWS"), help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.repeats, a.chunk_size, a.device, a.dtype)))
        return 0
    results: dict[tuple[str, int], dict] = {}
    for rows in sorted(a.sizes):
        for variant in a.variants:
            smaller = [r for (v, r) in results if v == variant and r < rows]
            if variant == "dense" and smaller and a.device == "cpu":
                ref = results[("dense", max(smaller))]
                scale = rows / ref["rows"]
                if ref["peak_mb"] * scale * 2**20 > 0.6 * _mem_available():
                    results[(variant, rows)] = {
                        **ref,
                        "rows": rows,
                        "peak_mb": ref["peak_mb"] * scale,
                        "time_s": ref["time_s"] * scale,
                        "extrapolated": True,
                    }
                    continue
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                variant,
                str(rows),
                "--repeats",
                str(a.repeats),
                "--chunk-size",
                str(a.chunk_size),
                "--device",
                a.device,
                "--dtype",
                a.dtype,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{variant} at {rows} rows failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            results[(variant, rows)] = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"  measured {variant:>10} rows={rows}: {results[(variant, rows)]}",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"\nforward+backward, V={V}, H={H}, {a.dtype} inputs, {a.device}, chunk {a.chunk_size}; peak above "
        "the inputs"
    )
    print("| B*T | variant | peak MB | time s | peak / dense | time / dense | time / liger |")
    print("|---|---|---|---|---|---|---|")
    for rows in sorted(a.sizes):
        dense, liger = results.get(("dense", rows)), results.get(("liger", rows))
        for variant in a.variants:
            r = results.get((variant, rows))
            if r is None:
                continue
            mark = "~" if r.get("extrapolated") else ""
            pd = f"{r['peak_mb'] / dense['peak_mb']:.3f}" if dense else "-"
            td = f"{r['time_s'] / dense['time_s']:.2f}" if dense else "-"
            tl = f"{r['time_s'] / liger['time_s']:.2f}" if liger else "-"
            peak, secs = f"{mark}{r['peak_mb']:.0f}", f"{mark}{r['time_s']:.2f}"
            print(f"| {rows} | {variant} | {peak} | {secs} | {pd} | {td} | {tl} |")
    if a.json:
        Path(a.json).write_text(json.dumps(list(results.values()), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
