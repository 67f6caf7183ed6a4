"""The CIFAR zoo is mdistiller's wherever both define an architecture: the same state-dict key names and
tensor shapes, the same parameter counts, and the same outputs (logits, ``feats``, ``preact_feats``,
pooled vector) from the same weights.

tests/data/mdistiller_cifar.json holds the facts, recorded from mdistiller's model definitions
(megvii-research/mdistiller@e8c5bb33, ``mdistiller/models/cifar/*.py``; none of its code is here): per
architecture its name there, every state-dict key with its shape, its parameter count, and the outputs of
its forward in float64 for the input and weights that ``fixed_input`` and ``fixed_state`` make.
"""

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from eakd.vision.models import create_model, load_checkpoint

FACTS = json.loads((Path(__file__).parent / "data" / "mdistiller_cifar.json").read_text())


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small float64 convolutions run faster on one thread than on contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fixed_state(shapes: dict[str, list[int]]) -> dict[str, Tensor]:
    """Deterministic float64 weights for these keys: fan-in scaled normal conv / linear weights, batch-norm
    scales near 1, small biases and running means, running variances in [1, ...)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0)
            continue
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if name.endswith("running_var"):
            x = 1 + 0.5 * x.abs()
        elif len(shape) > 1:
            x = x / math.sqrt(math.prod(shape[1:]))
        elif name.endswith("weight"):
            x = 1 + 0.1 * x
        else:
            x = 0.1 * x
        state[name] = x
    return state


def fixed_input() -> Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def outputs(logits: Tensor, feats: dict, pooled_key: str) -> dict[str, list[float]]:
    """What is compared: the first 8 logits of both images, the mean of every feature map, the pooled
    vector's mean."""
    out = {"logits": logits[:, :8].flatten().tolist(), "pooled": [feats[pooled_key].mean().item()]}
    for key in ("feats", "preact_feats"):
        if key in feats:
            out[key] = [f.mean().item() for f in feats[key]]
    return out


def shapes_of(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_every_shared_architecture_is_recorded():
    assert sorted(FACTS) == sorted(
        [f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)]
        + ["resnet8x4", "resnet32x4", "resnet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]
        + ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "mobilenetv2", "shufflenetv1", "shufflenetv2"]
    )


@pytest.mark.parametrize("name", sorted(FACTS))
def test_state_dict_keys_shapes_and_parameter_count(name):
    model = create_model(name, num_classes=100)
    assert shapes_of(model) == FACTS[name]["state"]
    assert sum(p.numel() for p in model.parameters()) == FACTS[name]["params"]


@pytest.mark.parametrize("name", sorted(FACTS))
def test_mdistiller_weights_give_mdistillers_outputs(name, tmp_path):
    """A checkpoint with mdistiller's keys (saved as its trainer does, under "model") loads strictly through
    load_checkpoint, and the model then computes what mdistiller's computes."""
    torch.save({"model": fixed_state(FACTS[name]["state"]), "epoch": 240}, tmp_path / "ckpt.pth")
    model = load_checkpoint(create_model(name, num_classes=100).double(), tmp_path / "ckpt.pth").eval()
    with torch.no_grad():
        logits, feats = model(fixed_input())
    got, want = outputs(logits, feats, "pooled"), FACTS[name]["outputs"]
    assert sorted(got) == sorted(want)
    for key in want:
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(want[key]), rtol=1e-7, atol=1e-9)


def test_mobilenetv2_is_mobile_half():
    """The 1x1 expansion (conv + BN + ReLU) is there in the first group too, whose expansion factor is 1."""
    first = create_model("mobilenetv2").blocks[0][0].conv
    kinds = [type(m).__name__ for m in first]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 2 + ["Conv2d", "BatchNorm2d"]
    assert first[0].weight.shape == (16, 16, 1, 1)
