"""Batches for the loop: the same global batches whatever the number of processes, and this process's share.

``GlobalBatches`` draws global batches from a permutation seeded by (seed, epoch) and gives each process
a contiguous part of each, from any batch on (a mid-epoch resume); ``make_loader`` seeds a worker's RNGs
before each batch from the loader's seed and the batch's first index, so what a batch draws (random
augmentation) depends neither on the worker nor on where the epoch was resumed;
``eval_loader`` gives each process a strided shard of the evaluation set.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

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
    start: the first batch yielded (batches before it were done before a mid-epoch checkpoint);
    ``num_batches`` counts the whole epoch, ``len`` the batches yielded.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        epoch: int,
        shuffle: bool,
        start: int = 0,
    ) -> None:
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.epoch, self.shuffle, self.start = seed, epoch, shuffle, start
        full, rest = divmod(n, batch_size)
        self.num_batches = full + (rest >= world)

    def __len__(self) -> int:
        return self.num_batches - self.start

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
        for i in range(self.start, self.num_batches):
            batch = order[i * self.batch_size : (i + 1) * self.batch_size]
            start, end = shard(len(batch), self.rank, self.world)
            yield batch[start:end]


class _SeededBatches(Dataset[Any]):
    """``dataset`` fetched a batch at a time; in a worker process python, numpy and torch are seeded
    before each batch from ``seed`` and the batch's first index (the main process's RNGs, which a
    checkpoint saves, are left alone)."""

    def __init__(self, dataset: Dataset[Any], seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        if indices and get_worker_info() is not None:
            s = (self.seed * 1_000_003 + indices[0]) % 2**32
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(indices) if getitems else [self.dataset[i] for i in indices]


def make_loader(
    dataset: Dataset[Any],
    batch_sampler: Sampler[list[int]],
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    seed: int,
) -> DataLoader[Any]:
    """A DataLoader over ``batch_sampler``; a worker's RNGs are seeded per batch from ``seed`` (exact on
    resume, also mid-epoch); its own generator keeps the global RNG untouched."""
    return DataLoader(
        _SeededBatches(dataset, seed),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
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
