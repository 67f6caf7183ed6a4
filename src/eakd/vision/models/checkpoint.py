"""Loading weights from checkpoint files into zoo models."""

from pathlib import Path

import torch
from torch import Tensor, nn

_SHOWN = 5  # key names quoted per kind of mismatch


def _state_dict(obj: object, key: str | None, path: Path) -> dict[str, Tensor]:
    """Pick the state dict out of a loaded checkpoint: ``obj[key]``, else ``obj["model"]`` (mdistiller),
    else ``obj["state_dict"]``, else ``obj`` itself; of an eakd run's checkpoint (keys ``student.*`` and
    maybe the loss's learnable parts) only the student's weights."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise KeyError(f"{path}: no key {key!r}; top-level keys: {sorted(obj)[:20]}")
        obj = obj[key]
    else:
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if any(k.startswith("student.") for k in state):  # an eakd run's trainable module: its student part
        state = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    return state


def _names(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_checkpoint(model: nn.Module, path: str | Path, key: str | None = None) -> nn.Module:
    """Load weights into ``model`` (in place) and return it.

    Accepts a plain state dict, a dict holding it under ``"model"`` (mdistiller's published CIFAR teachers)
    or ``"state_dict"``, or under ``key`` when given; a ``"module."`` (DDP) prefix is stripped. Reads with
    ``weights_only=True`` on the CPU. Missing, unexpected or mis-shaped keys raise a ValueError naming some.
    """
    path = Path(path)
    state = _state_dict(torch.load(path, map_location="cpu", weights_only=True), key, path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
    if reshaped:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped]
        problems.append(f"{len(reshaped)} keys with other shapes (checkpoint vs model): {_names(shapes)}")
    if problems:
        raise ValueError(f"{path} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state)
    return model
