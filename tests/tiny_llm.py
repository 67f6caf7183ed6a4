"""A tiny word-level tokenizer with a chat template and a tiny Llama teacher, for the LLM tests (also
used by the multi-process script, outside pytest)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
PAIRS = [
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
