"""Which Trainer checkpoint an LLM run resumes from (``train.resume_from_checkpoint``): a folder named
by the user, or with ``auto`` the latest one that is complete."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors import SafetensorError, safe_open

from eakd.llm.callbacks import SELECTION
from eakd.llm.trainer import EAKDConfig


def resume_checkpoint(args: EAKDConfig) -> str | None:
    """The checkpoint ``train.resume_from_checkpoint`` names: None (unset, or ``auto`` without a complete
    checkpoint yet), the latest complete ``checkpoint-N`` of ``args.output_dir`` (``auto``: its
    trainer_state.json reads back, its weight files are whole and the best-validation selection, written
    last, is there; each folder passed over is named on stderr with the reason), or the given folder
    (FileNotFoundError if missing)."""
    want = args.resume_from_checkpoint
    if want is None:
        return None
    if want != "auto":
        if not (Path(want) / "trainer_state.json").is_file():
            raise FileNotFoundError(
                f"train.resume_from_checkpoint {want} is not a checkpoint folder (no trainer_state.json); "
                "give a checkpoint-N folder of a run, or auto"
            )
        return want
    done = []
    for folder in Path(args.output_dir).glob("checkpoint-*"):
        if not folder.name.removeprefix("checkpoint-").isdigit():
            continue
        why = checkpoint_fault(folder)
        if why is None:
            done.append((int(folder.name.removeprefix("checkpoint-")), str(folder)))
        else:
            print(f"resume: passing over {folder} ({why})", file=sys.stderr, flush=True)
    return max(done)[1] if done else None


def checkpoint_fault(folder: Path) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from (killed while it was written, or a weight
    file cut short), or None when it is complete."""
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json: killed while it was written"
    if not (folder / SELECTION).is_file():
        return f"no {SELECTION}: killed before the selection was saved with it"
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "pt"):
                pass
        except (OSError, SafetensorError) as e:
            return f"{weights.name} unreadable: {str(e).splitlines()[0]}"
    return None
