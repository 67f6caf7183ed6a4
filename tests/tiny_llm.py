"""A tiny word-level tokenizer with a chat template and a tiny Llama teacher, for the LLM tests (also
used by the multi-process script, outside pytest), and a whole ``eakd llm train`` run config on them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
PAIRS = [  # 4 distinct pairs, each 4 times (de-duplication keeps 4)
    {"prompt": "what is ai", "response": "ai is the science of making machines think"},
    {"prompt": "hello", "response": "hi there how are you"},
    {"prompt": "what is a computer", "response": "a computer is a machine that computes"},
    {"prompt": "do you like music", "response": "yes i like music a lot"},
] * 4


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the words of PAIRS, with <|im_start|>/<|im_end|> and the chat template."""
    words = sorted(
        {w for p in PAIRS for w in (p["prompt"] + " " + p["response"]).split()} | {"user", "assistant"}
    )
    specials = ["[UNK]", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.pad_token = fast.eos_token
    fast.chat_template = TEMPLATE
    return fast


def make_teacher(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A 4-layer, 32-wide Llama over the tokenizer's vocabulary, seeded, frozen, in eval mode."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval().requires_grad_(False)


def write_run(folder: Path, **train: object) -> Path:
    """A run of ``eakd llm train`` on the tiny teacher (folder/teacher) and PAIRS (folder/pairs.jsonl):
    writes and returns folder/run.yaml, its train section the defaults below updated by ``train``."""
    tokenizer = make_tokenizer()
    make_teacher(tokenizer).save_pretrained(folder / "teacher")
    tokenizer.save_pretrained(folder / "teacher")
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in PAIRS))
    section = {
        "output_dir": str(folder / "run"),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "use_cpu": True,
        "warmup_steps": 0,
        "logging_steps": 1,
        "tau": 2.0,
        **train,
    }
    config = {
        "model": {"teacher": str(folder / "teacher"), "student_layers": 2},
        "data": {
            "source": str(folder / "pairs.jsonl"),
            "prompt_column": "prompt",
            "context_column": None,
            "val_size": 1,
            "test_size": 1,
            "max_length": 32,
        },
        "eval": {"max_new_tokens": 4, "sampling_seeds": 2, "every": 1},
        "train": section,
    }
    (folder / "run.yaml").write_text(json.dumps(config))  # JSON is YAML
    return folder / "run.yaml"
