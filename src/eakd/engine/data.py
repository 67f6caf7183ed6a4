"""Batches for the loop: the same global batches whatever the number of processes, and this process's share.

``GlobalBatches`` draws global batches from a permutation seeded by (seed, epoch) and gives each process
a contiguous part of each; ``make_loader`` seeds the workers from the run's seed only (exact on resume);
``eval_loader`` gives each process a strided shard of the evaluation set.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Dataset, Sampler

if TYPE_CHECKING:
    from accelerate import Accelerator

    from eakd.engine.task import Task


def shard(size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of process ``rank``'s share of a global batch of ``size``: near-equal contiguous parts."""
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class GlobalBatches(Sampler[list[int]]):
    """Batch sampler: global batches of ``batch_size`` from a permutation seeded by (seed, epoch), and this
    process's contiguous share of each. Every process count sees the same global batches; a last batch
    smaller than the number of processes is dropped. ``batch_sizes(i)`` = (global, local) size of batch i.
    """

    def __init__(
        self, n: int, batch_size: int, rank: int, world: int, seed: int, epoch: int, shuffle: bool
    ) -> None:
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        full, rest = divmod(n, batch_size)
        self.num_batches = full + (rest >= world)

    def __len__(self) -> int:
        return self.num_batches

    def batch_sizes(self, i: int) -> tuple[int, int]:
        size = min(self.batch_size, self.n - i * self.batch_size)
        start, end = shard(size, self.rank, self.world)
        return size, end - start

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for i in range(self.num_batches):
            batch = order[i * self.batch_size : (i + 1) * self.batch_size]
            start, end = shard(len(batch), self.rank, self.world)
            yield batch[start:end]


def _seed_worker(_: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_loader(
    dataset: Dataset[Any],
    batch_sampler: Sampler[list[int]],
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    seed: int,
) -> DataLoader[Any]:
    """A DataLoader over ``batch_sampler``; worker RNGs derive from ``seed`` only (exact on resume)."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(
    task: Task, batch_size: int, accelerator: Accelerator, num_workers: int
) -> Iterator[Any] | None:
    """This process's strided shard of ``task.eval_set`` in batches, moved to the device (None: no set)."""
    if task.eval_set is None:
        return None
    ids = list(range(accelerator.process_index, len(task.eval_set), accelerator.num_processes))  # type: ignore[arg-type]
    batches = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    loader = make_loader(task.eval_set, batches, num_workers, task.collate_fn, 0)  # type: ignore[arg-type]
    return (send_to_device(b, accelerator.device) for b in loader)
