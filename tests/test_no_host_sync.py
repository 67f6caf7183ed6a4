"""No host read-back in the training hot path: the checks record device-side flags, read at logging steps.

Read-backs are counted by patching the tensor methods that copy a value to the host (``item``, ``tolist``,
``__bool__``, ``__float__``, ``__int__``, ``numpy``) and those whose output size depends on the values
(``nonzero``, indexing with a boolean mask). On a CPU they cost little, but on a GPU each one waits for the
device: a count that grows with the number of steps is a sync per step.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest
import torch
from test_engine_trainer import toy_config, toy_task

import eakd

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "nonzero")


def called_from(path_part: str) -> bool:
    """Whether a frame of the current call stack runs code of a file whose path contains ``path_part``."""
    frame = sys._getframe(2)
    while frame is not None:
        if path_part in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def counted_reads(ignore: str | None = None) -> Iterator[list[str]]:
    """Patch the read-back methods of torch.Tensor; yields the list of methods called, in order, except
    those called from code of a file whose path contains ``ignore``."""
    seen: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name):
        def read(self, *args, **kwargs):
            if ignore is None or not called_from(ignore):
                seen.append(name)
            return originals[name](self, *args, **kwargs)

        return read

    def masked(index) -> bool:
        parts = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts)

    getitem, nonzero = torch.Tensor.__getitem__, torch.nonzero

    def get(self, index):
        if masked(index) and (ignore is None or not called_from(ignore)):
            seen.append("boolean mask index")
        return getitem(self, index)

    def nonzero_fn(x, *args, **kwargs):
        if ignore is None or not called_from(ignore):
            seen.append("nonzero")
        return nonzero(x, *args, **kwargs)

    for name in READS:
        setattr(torch.Tensor, name, wrap(name))
    torch.Tensor.__getitem__, torch.nonzero = get, nonzero_fn
    try:
        yield seen
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
        torch.Tensor.__getitem__, torch.nonzero = getitem, nonzero


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
    with counted_reads() as seen:
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


def llm_trainer(tmp_path, chunked: bool, cached: bool, samples: int = 0, **train):
    """An EAKDTrainer on the tiny teacher (tests/tiny_llm.py) and a 2-layer student, teacher online or
    from a top-k cache (sampled with ``samples`` > 0), never logging (logging_steps beyond the steps
    run); and one collated batch."""
    from functools import partial

    from tiny_llm import PAIRS, make_teacher, make_tokenizer

    from eakd.llm.cache import build_cache
    from eakd.llm.data import collate, encode_pairs
    from eakd.llm.models import make_student
    from eakd.llm.trainer import EAKDConfig, EAKDTrainer

    tokenizer = make_tokenizer()
    teacher = make_teacher(tokenizer)
    student = make_student(teacher, num_layers=2, init="random")
    rows = encode_pairs(tokenizer, PAIRS[:4])
    args = EAKDConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], logging_steps=1000,
                      chunked=chunked, chunk_size=8, ce_weight=0.5, tau=2.0, **train)  # fmt: skip
    cache = None
    if cached:
        cache = build_cache(teacher, rows, tokenizer.pad_token_id, top_k=4, tau=2.0, samples=samples)
        rows = cache.attach(rows)
    trainer = EAKDTrainer(
        model=student,
        teacher=None if cached else teacher,
        teacher_cache=cache,
        args=args,
        train_dataset=rows,
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
    )
    return trainer, collate(rows, tokenizer.pad_token_id)


# transformers' own attention-mask code reads the padding mask back in each eager forward (to choose
# SDPA's causal kernel); that is the model's, not the loss's: left out of the count
MODEL_MASKS = "transformers/masking_utils.py"
ARMS = [{}, {"weight_level": "sequence", "weight_norm": "mean"}, {"weighting": "none", "divergence": "jsd"}]


@pytest.mark.parametrize("cached", [False, True], ids=["online", "cache"])
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "dense"])
@pytest.mark.parametrize("train", ARMS, ids=["ea", "ea-sequence-norm", "jsd"])
def test_llm_compute_loss_reads_nothing_back(tmp_path, chunked, cached, train):
    """Training micro-batches of EAKDTrainer (its input checks, teacher cache rows, loss and guard) read
    nothing back to the host outside logging steps; the flags they record are read once by the guard."""
    trainer, batch = llm_trainer(tmp_path, chunked, cached, **train)
    model = trainer.model.train()
    n_items = (batch["labels"][:, 1:] != -100).sum()
    trainer.compute_loss(model, batch, num_items_in_batch=n_items).backward()  # warm-up
    with counted_reads(ignore=MODEL_MASKS) as seen:
        for _ in range(3):
            trainer.compute_loss(model, batch, num_items_in_batch=n_items).backward()
    assert seen == []
    trainer.guard.check()  # the flags of those steps, read once: all clear


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "dense"])
def test_llm_sampled_cache_reads_nothing_back(tmp_path, chunked):
    """The same with a sampled teacher cache (its estimate of the divergence, EA weights)."""
    trainer, batch = llm_trainer(tmp_path, chunked, True, samples=3)
    model = trainer.model.train()
    n_items = (batch["labels"][:, 1:] != -100).sum()
    trainer.compute_loss(model, batch, num_items_in_batch=n_items).backward()  # warm-up
    with counted_reads(ignore=MODEL_MASKS) as seen:
        trainer.compute_loss(model, batch, num_items_in_batch=n_items).backward()
    assert seen == []
    trainer.guard.check()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "dense"])
def test_llm_compute_loss_on_generated_responses_reads_nothing_back(tmp_path, chunked):
    """On-policy data (lmbda 1): generating a micro-batch's responses reads back (the step's one sync, before
    the loss); the loss on the generated batch, as the Trainer runs it, reads nothing back."""
    trainer, batch = llm_trainer(tmp_path, chunked, False, lmbda=1.0, max_new_tokens=6)
    model = trainer.model.train()
    generated = trainer._responses(batch, 0)
    assert generated is not batch
    n_items = (generated["labels"][:, 1:] != -100).sum()
    trainer.compute_loss(model, generated, num_items_in_batch=n_items).backward()  # warm-up
    with counted_reads(ignore=MODEL_MASKS) as seen:
        for _ in range(3):
            trainer.compute_loss(model, generated, num_items_in_batch=n_items).backward()
    assert seen == []
    trainer.guard.check()


def test_llm_compute_loss_without_label_index_reads_back(tmp_path):
    """The count sees a read-back: a batch without the collator's label_index is compacted with nonzero."""
    trainer, batch = llm_trainer(tmp_path, True, False)
    model = trainer.model.train()
    batch = {k: v for k, v in batch.items() if k != "label_index"}
    with counted_reads(ignore=MODEL_MASKS) as seen:
        trainer.compute_loss(model, batch)
    assert seen


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "dense"])
@pytest.mark.parametrize(
    ("cached", "spoil", "what"),
    [
        (False, "label", "labels outside"),
        (True, "label", "labels outside"),
        (False, "label_index", "a label_index that is not"),
        (True, "cache_index", "a teacher cache that does not match the batch"),
    ],
)
def test_llm_bad_batch_stops_at_the_guard_naming_step_and_input(tmp_path, chunked, cached, spoil, what):
    """A bad input raises nothing in the step (no host read) and the guard's next check names the step
    and what was wrong (InvalidBatchError); a good step before it is not reported."""
    from eakd.llm.callbacks import InvalidBatchError

    trainer, batch = llm_trainer(tmp_path, chunked, cached)
    model = trainer.model.train()
    trainer.compute_loss(model, batch).backward()  # step 1: good
    trainer.guard.check()
    bad = dict(batch)
    if spoil == "label":
        labels = batch["labels"].clone()
        labels[0, -1] = 10_000  # beyond the vocabulary, not ignore_index
        bad["labels"] = labels
        bad["label_index"] = torch.tensor(sorted(set(batch["label_index"].tolist()) | {labels.shape[1] - 2}))
    elif spoil == "label_index":
        bad["label_index"] = batch["label_index"][1:]  # one labelled token left out
    else:
        bad["cache_index"] = batch["cache_index"].flip(0)  # other rows' tokens: the counts differ
    trainer.state.global_step = 6
    trainer.compute_loss(model, bad).backward()  # step 7: no error here
    with pytest.raises(InvalidBatchError, match=f"the batch at step 7 had {what}"):
        trainer.guard.check()
