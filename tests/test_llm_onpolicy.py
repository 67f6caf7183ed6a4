"""On-policy and mixed data (GKD's lmbda and seq_kd, ``eakd.llm.onpolicy``): the generated batch's layout
and masks against TRL's ``GKDTrainer.generate_on_policy_outputs``, the loss on it against TRL's
``generalized_jsd_loss`` (values and gradients), the seeded draw, training end to end, and the refusals."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")
from tiny_llm import PAIRS, make_teacher, make_tokenizer, write_run

from eakd.engine.config import ConfigError
from eakd.llm.cache import build_cache
from eakd.llm.data import IGNORE_INDEX, collate, encode_pairs
from eakd.llm.models import make_student
from eakd.llm.onpolicy import (
    generated_batch,
    left_padded,
    prompts_of,
    rebuilt,
    responses,
    student_generates,
)
from eakd.llm.settings import GenerationSettings
from eakd.llm.trainer import EAKDConfig, EAKDTrainer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def teacher(tokenizer):
    return make_teacher(tokenizer)


def _args(tmp_path: Path, **kw: object) -> EAKDConfig:
    base = {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 4, "max_steps": 3,
            "learning_rate": 1e-2, "logging_steps": 1, "report_to": [], "save_strategy": "no",
            "use_cpu": True, "chunk_size": 8, "tau": 2.0, "max_new_tokens": 6}  # fmt: skip
    return EAKDConfig(**{**base, **kw})


def _trainer(tokenizer, teacher, tmp_path: Path, **kw: object) -> EAKDTrainer:
    return EAKDTrainer(
        model=make_student(teacher, num_layers=2, init="layers"),
        teacher=teacher,
        args=_args(tmp_path, **kw),
        train_dataset=encode_pairs(tokenizer, PAIRS),
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
    )


def test_settings_are_checked_when_built(tmp_path: Path) -> None:
    for bad, match in [({"lmbda": 1.5}, "lmbda"), ({"max_new_tokens": 0}, "max_new_tokens"),
                       ({"gen_temperature": -1.0}, "gen_temperature"), ({"gen_top_p": 0.0}, "gen_top_p"),
                       ({"gen_top_k": -1}, "gen_top_k")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            GenerationSettings(**bad)
        with pytest.raises(ValueError, match=match):
            _args(tmp_path, **bad)
    assert not GenerationSettings().generates() and GenerationSettings(seq_kd=True).generates()


def test_the_draw_is_seeded_and_has_the_asked_frequency() -> None:
    """A function of (seed, step, micro-batch) only: a resumed run draws as the uninterrupted one."""
    draws = [student_generates(0, step, micro, 0.3) for step in range(1000) for micro in range(2)]
    assert draws == [student_generates(0, step, micro, 0.3) for step in range(1000) for micro in range(2)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert draws != [student_generates(1, step, micro, 0.3) for step in range(1000) for micro in range(2)]
    assert not any(student_generates(0, s, 0, 0.0) for s in range(200))
    assert all(student_generates(0, s, 0, 1.0) for s in range(200))


class _Generated:
    """A stand-in model whose ``generate`` returns fixed sequences (for TRL's static method)."""

    def __init__(self, sequences: torch.Tensor) -> None:
        self.sequences = sequences

    def generate(self, **kwargs: object) -> SimpleNamespace:
        return SimpleNamespace(sequences=self.sequences)


@pytest.mark.parametrize("eos", [[2], [2, 5]], ids=["one-eos", "eos-list"])
def test_generated_responses_are_masked_as_trl_masks_them(tokenizer, eos: list[int]) -> None:
    """The labelled tokens of each rebuilt row are those TRL's generate_on_policy_outputs labels on the
    same generated sequences: the completion up to and including its first EOS (the whole completion
    without one), never the prompt or padding."""
    pytest.importorskip("trl")
    from transformers import GenerationConfig
    from trl.experimental.gkd import GKDTrainer

    batch = collate(encode_pairs(tokenizer, PAIRS[:4]), tokenizer.pad_token_id)
    prompts = prompts_of(batch)
    ids, mask = left_padded(prompts, tokenizer.pad_token_id)
    completions = torch.tensor(
        [[7, 8, 2, 9, 2], [5, 7, 7, 7, 7], [9, 9, 9, 9, 9], [2, 7, 7, 2, 2]]  # EOS mid, 5, none, first
    )
    sequences = torch.cat([ids, completions], 1)
    inputs = {"prompts": ids, "prompt_attention_mask": mask}
    _, trl_mask, trl_labels = GKDTrainer.generate_on_policy_outputs(
        _Generated(sequences), inputs, GenerationConfig(eos_token_id=eos)
    )
    ours = responses(completions, eos)
    for i, row in enumerate(ours):
        assert row == trl_labels[i][trl_labels[i] != IGNORE_INDEX].tolist()
        assert trl_mask[i, ids.shape[1] :].sum() == len(row)
    batch = rebuilt(prompts, ours, tokenizer.pad_token_id)
    for i, (p, r) in enumerate(zip(prompts, ours, strict=True)):
        assert batch["input_ids"][i, : len(p) + len(r)].tolist() == p + r
        assert batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist() == r


def test_generated_batch_keeps_prompts_and_is_seeded(tokenizer, teacher) -> None:
    student = make_student(teacher, num_layers=2, init="layers")
    batch = collate(encode_pairs(tokenizer, PAIRS[:4]), tokenizer.pad_token_id)
    gen = GenerationSettings(lmbda=1.0, max_new_tokens=6)
    a = generated_batch(student, batch, gen, tokenizer.pad_token_id, seed=3)
    b = generated_batch(student, batch, gen, tokenizer.pad_token_id, seed=3)
    c = generated_batch(student, batch, gen, tokenizer.pad_token_id, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["input_ids"], c["input_ids"])
    assert student.training  # its mode restored
    for i, p in enumerate(prompts_of(batch)):
        assert a["input_ids"][i, : len(p)].tolist() == p
        assert (a["labels"][i, : len(p)] == IGNORE_INDEX).all()
        n = int((a["labels"][i] != IGNORE_INDEX).sum())
        assert 1 <= n <= gen.max_new_tokens and int(a["attention_mask"][i].sum()) == len(p) + n
    flat = a["labels"][:, 1:].reshape(-1)
    assert torch.equal(a["label_index"], (flat != IGNORE_INDEX).nonzero().squeeze(1))
    greedy = generated_batch(student, batch, GenerationSettings(gen_temperature=0.0, max_new_tokens=6),
                             tokenizer.pad_token_id, seed=0)  # fmt: skip
    ids, mask = left_padded(prompts_of(batch), tokenizer.pad_token_id)
    want = student.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    assert [r for r in responses(want[:, ids.shape[1] :], [tokenizer.eos_token_id])] == [
        greedy["labels"][i][greedy["labels"][i] != IGNORE_INDEX].tolist() for i in range(4)
    ]


@pytest.mark.parametrize("beta", [0.5, 0.0, 1.0])
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "dense"])
def test_loss_on_generated_responses_equals_trl_generalized_jsd(tokenizer, teacher, tmp_path, beta, chunked):
    """On the same batch and generated sequences, weighting none and JSD(beta) at temperature 1 (TRL's
    compute_loss passes none), our loss equals TRL's generalized_jsd_loss on the shifted logits and labels,
    in value and in the student's gradients: TRL's "batchmean" divides the sum over labelled tokens by
    their count (labels != -100), as our default denominator; with num_items_in_batch both divide by it."""
    pytest.importorskip("trl")
    from trl.experimental.gkd import GKDTrainer

    trainer = _trainer(tokenizer, teacher, tmp_path, divergence="jsd", beta=beta, weighting="none",
                       chunked=chunked, lmbda=1.0)  # fmt: skip
    student = trainer.model.train()
    batch = collate(encode_pairs(tokenizer, PAIRS[:4]), tokenizer.pad_token_id)
    generated = trainer._responses(batch, 0)
    assert generated is not batch
    feed = {k: generated[k] for k in ("input_ids", "attention_mask")}
    for num_items in (None, 37):
        student.zero_grad()
        ours = trainer.compute_loss(student, generated, num_items_in_batch=num_items)
        ours.backward()
        ours_grads = {n: p.grad.clone() for n, p in student.named_parameters()}
        student.zero_grad()
        with torch.no_grad():
            t_logits = teacher(**feed).logits
        s_logits = student(**feed).logits
        theirs = GKDTrainer.generalized_jsd_loss(
            s_logits[:, :-1], t_logits[:, :-1], generated["labels"][:, 1:], beta=beta, temperature=1.0,
            reduction="batchmean", num_items_in_batch=num_items,
        )  # fmt: skip
        theirs.backward()
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
        for name, p in student.named_parameters():
            torch.testing.assert_close(ours_grads[name], p.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_onpolicy_run_trains_and_counts_generated_tokens(tokenizer, teacher, tmp_path: Path) -> None:
    """lmbda 0.5 with 2 accumulated micro-batches and seq_kd: every micro-batch is generated (by the
    student when drawn, else by the teacher), the step's token count is that of the generated batches, the
    student learns and the run logs its terms."""
    trainer = _trainer(tokenizer, teacher, tmp_path, lmbda=0.5, seq_kd=True, gradient_accumulation_steps=2,
                       ce_weight=0.5)  # fmt: skip
    counts, models = [], []
    get_num = trainer._get_num_items_in_batch
    trainer._get_num_items_in_batch = (
        lambda batches, device: (
            counts.append(  # type: ignore[method-assign]
                (
                    sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches),
                    get_num(batches, device),
                )
            )
            or counts[-1][1]
        )
    )
    import eakd.llm.trainer as trainer_module

    original = trainer_module.generated_batch
    trainer_module.generated_batch = lambda model, *a, **k: models.append(model) or original(model, *a, **k)
    try:
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        result = trainer.train()
    finally:
        trainer_module.generated_batch = original
    assert len(models) == 6 and {id(m) for m in models} == {id(trainer.model), id(teacher)}
    seed = trainer.args.seed
    assert [student_generates(seed, s, m, 0.5) for s in range(3) for m in range(2)] == [
        m is trainer.model for m in models
    ]
    assert counts[1::2] and all(int(got) == want for want, got in counts[1::2])  # recounted after generation
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(h["loss"] == pytest.approx(h["loss_kd"] + 0.5 * h["loss_ce"], rel=1e-4)
                                  for h in logs)  # fmt: skip


def test_generation_with_a_teacher_cache_is_refused(tokenizer, teacher, tmp_path: Path) -> None:
    rows = encode_pairs(tokenizer, PAIRS[:4])
    cache = build_cache(teacher, rows, tokenizer.pad_token_id, top_k=4, tau=2.0)
    for kw in ({"lmbda": 0.5}, {"seq_kd": True}):
        with pytest.raises(ValueError, match="teacher online"):
            EAKDTrainer(model=make_student(teacher, num_layers=2), teacher=None, teacher_cache=cache,
                        args=_args(tmp_path, **kw), train_dataset=cache.attach(rows))  # fmt: skip
    from eakd.llm.cli import read_run_config

    config = write_run(tmp_path)
    with pytest.raises(ConfigError, match=r"model.teacher_cache .* train.lmbda > 0 or train.seq_kd"):
        read_run_config(str(config), ["model.teacher_cache=x.safetensors", "train.lmbda=0.5"])


def test_eakd_llm_train_with_lmbda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`eakd llm train` with train.lmbda=1 runs end to end on the tiny teacher; a cache with it is one line,
    exit 2."""
    from eakd.cli import main

    config = write_run(tmp_path, lmbda=1.0, max_new_tokens=4, divergence="jsd", weighting="ea")
    assert main(["llm", "train", str(config)]) == 0
    assert (tmp_path / "run" / "results.json").is_file()
    capsys.readouterr()
    assert main(["llm", "train", str(config), "model.teacher_cache=x.safetensors"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eakd llm train: ") and "train.lmbda" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_onpolicy_on_the_smollm2_teacher_with_a_tiny_student(tmp_path: Path) -> None:
    """Two on-policy steps (lmbda 1) of a 1-layer student of the offline SmolLM2-135M-Instruct teacher on
    chatterbot pairs: the student generates, the teacher scores its responses online, the student moves."""
    from eakd.llm.data import load_pairs
    from eakd.llm.models import load_teacher

    torch.set_num_threads(1)
    teacher, tok = load_teacher("smollm2")
    student = make_student(teacher, num_layers=1, init="layers")
    rows = encode_pairs(tok, load_pairs("chatterbot")[:8], max_length=64)
    args = _args(tmp_path, max_steps=2, lmbda=1.0, max_new_tokens=8, chunk_size=64)
    collator = partial(collate, pad_token_id=tok.pad_token_id)
    trainer = EAKDTrainer(model=student, teacher=teacher, processing_class=tok, args=args, train_dataset=rows,
                          data_collator=collator)  # fmt: skip
    seen = []
    original = trainer._responses
    trainer._responses = lambda b, i: seen.append(original(b, i)) or seen[-1]  # type: ignore[method-assign]
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    result = trainer.train()
    assert len(seen) == 2 and torch.isfinite(torch.tensor(result.training_loss))
    for batch in seen:
        n = (batch["labels"] != IGNORE_INDEX).sum(1)
        assert ((n >= 1) & (n <= 8)).all()
    assert any(not torch.equal(p, before[n]) for n, p in student.named_parameters())
