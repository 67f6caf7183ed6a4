"""No host read-back in the training hot path: the checks record device-side flags, read at logging steps.

Read-backs are counted by patching the tensor methods that copy a value to the host (``item``, ``tolist``,
``__bool__``, ``__float__``, ``__int__``, ``numpy``). On a CPU they cost little, but on a GPU each one waits
for the device: a count that grows with the number of steps is a sync per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from test_engine_trainer import toy_config, toy_task

import eakd
from eakd.checks import deferred_checks

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


@contextlib.contextmanager
def counted_reads() -> Iterator[list[str]]:
    """Patch the read-back methods of torch.Tensor; yields the list of methods called, in order."""
    seen: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name):
        def read(self, *args, **kwargs):
            seen.append(name)
            return originals[name](self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield seen
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


@pytest.mark.parametrize("method", ["kd", "dkd"])
@pytest.mark.parametrize("weighting", ["ea", "none", "er"])
def test_distill_loss_reads_nothing_back_in_training_mode(method, weighting):
    loss = eakd.DistillLoss(method, weighting, sync_checks=False, temperature=4.0)
    zs = torch.randn(16, 10, requires_grad=True)
    zt, target = torch.randn(16, 10), torch.randint(0, 10, (16,))
    loss(zs, zt, target)  # warm-up
    with counted_reads() as seen:
        for _ in range(3):
            sum(loss(zs, zt, target).values()).backward()
    assert seen == []


def test_classification_step_reads_nothing_back(tmp_path):
    cfg = toy_config(tmp_path)
    task = toy_task(cfg)
    task.loss.sync_checks = False
    batch = next(iter(torch.utils.data.DataLoader(task.train_set, batch_size=8)))
    task.training_step(task.trainable, batch, 0.5)
    with counted_reads() as seen, deferred_checks():
        for _ in range(3):
            terms = task.training_step(task.trainable, batch, 0.5)
            torch.stack(list(terms.values())).sum().backward()
            task.diagnostics()
    assert seen == []


def reads_of_a_run(tmp_path, n: int) -> int:
    """Read-backs of a whole `train` of one epoch over ``n`` samples (batch 8), nothing logged per step."""
    cfg = toy_config(tmp_path, f"experiment.name=n{n}", "train.epochs=1", "train.log_every=0",
                     "train.diag_every=0", "train.ckpt_every=0", "train.eval_every=0",
                     f"data.options={{n: {n}}}")  # fmt: skip
    task = toy_task(cfg)
    task.loss.sync_checks = False  # as the task builders make it: the engine reads the flags
    with counted_reads() as seen:
        eakd.engine.train(cfg, task)
    return len(seen)


def test_engine_reads_do_not_grow_with_the_steps(tmp_path):
    few, many = reads_of_a_run(tmp_path, 16), reads_of_a_run(tmp_path, 64)
    assert few == many, f"{few} read-backs for 2 steps, {many} for 8: a read-back per step"
