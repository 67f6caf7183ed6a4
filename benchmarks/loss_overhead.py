"""What EA costs on top of the distillation loss: forward+backward time, side by side in one process.

Rows: KD and DKD at (64, 100) and (512, 1000), and token-level KD (forward KL) at (4096, 32000).
Columns: median time of the unweighted loss, of EA with our weights, of EA with the authors'
formulation of the weights (softmax, log(p + 1e-10), built inside the autograd graph), and the ratios.
Absolute times on a shared machine mean little; the ratios are measured in the same process, with the
contenders interleaved repeat by repeat.

    python benchmarks/loss_overhead.py [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import eakd
from eakd.losses import dkd_loss, kd_loss, weighted_mean


def authors_weights(zs: torch.Tensor, zt: torch.Tensor, tau: float, h_ub: float) -> torch.Tensor:
    """The authors' formulation: probabilities, then log(p + 1e-10), on the graph, detached at the end."""
    pt = torch.softmax(zt / tau, dim=1)
    ps = torch.softmax(zs / tau, dim=1)
    h_t = -(pt * torch.log(pt + 1e-10)).sum(1)
    h_s = -(ps * torch.log(ps + 1e-10)).sum(1)
    return ((h_t + h_t * h_s / h_ub) / 2).detach()


def make_step(loss: str, weighting: str, zs: torch.Tensor, zt: torch.Tensor, target: torch.Tensor):
    """A closure running one forward+backward of the chosen loss and weighting."""
    h_ub = float(torch.log(torch.tensor(float(zs.shape[1]))))

    def per_sample() -> torch.Tensor:
        if loss == "dkd":
            return dkd_loss(zs, zt, target, alpha=1.0, beta=8.0, temperature=4.0)
        return kd_loss(zs, zt, temperature=4.0 if zs.shape[1] < 10000 else 1.0)

    def step() -> None:
        zs.grad = None
        values = per_sample()
        if weighting == "none":
            w = None
        elif weighting == "ours":
            w = eakd.ea_weights(zs, zt, tau=3.0)
        else:
            w = authors_weights(zs, zt, 3.0, h_ub)
        weighted_mean(values, w).backward()

    return step


def bench(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each step, interleaving the contenders each repeat."""
    for fn in steps.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("kd", 64, 100), ("dkd", 64, 100), ("kd", 512, 1000), ("dkd", 512, 1000), ("kd", 4096, 32000)]
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} interleaved repeats")
    header = f"{'loss':<8}{'shape':>14}{'base ms':>10}{'EA ms':>10}{'authors ms':>12}"
    print(header + f"{'EA/base':>10}{'authors/base':>14}{'EA/authors':>12}")
    for loss, n, k in cases:
        zs = torch.randn(n, k, generator=g).requires_grad_()
        zt = torch.randn(n, k, generator=g) * 2
        target = torch.randint(0, k, (n,), generator=g)
        steps = {w: make_step(loss, w, zs, zt, target) for w in ("none", "ours", "authors")}
        reps = max(5, args.repeats // 5) if n * k > 10**7 else args.repeats
        t = bench(steps, reps)
        name = "tok-fkl" if k >= 10000 else loss
        print(
            f"{name:<8}{f'({n},{k})':>14}{t['none'] * 1e3:>10.2f}{t['ours'] * 1e3:>10.2f}"
            f"{t['authors'] * 1e3:>12.2f}{t['ours'] / t['none']:>10.3f}{t['authors'] / t['none']:>14.3f}"
            f"{t['ours'] / t['authors']:>12.3f}"
        )


if __name__ == "__main__":
    main()
