"""The image-classification model zoo: output contract, registry, torchvision wrapper, checkpoint loading."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from eakd.vision.models import create_model, list_models, load_checkpoint, register_model

CIFAR_ZOO = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
    "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "mobilenetv2", "shufflenetv1", "shufflenetv2", "resnet50",
]  # fmt: skip
SMALL = ["fmnist_cnn", "fmnist_tiny", "mlp"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny convolutions run faster on one thread than on two contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check_output(model: nn.Module, x: torch.Tensor, num_classes: int) -> dict:
    model.eval()
    with torch.no_grad():
        logits, feats = model(x)
    assert logits.shape == (x.shape[0], num_classes)
    assert [f.shape[1] for f in feats["feats"]] == model.stage_channels
    assert all(f.shape[0] == x.shape[0] for f in feats["feats"])
    assert feats["pooled"].ndim == 2 and feats["pooled"].shape[0] == x.shape[0]
    for f, p in zip(feats["feats"], feats.get("preact_feats", feats["feats"]), strict=True):
        assert f.shape == p.shape
    return feats


def test_registry_lists_the_zoo() -> None:
    assert set(CIFAR_ZOO + SMALL + ["mobilenetv1"]) <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", [*CIFAR_ZOO, "mobilenetv1"])
def test_cifar_zoo_output_contract(name: str) -> None:
    check_output(create_model(name, num_classes=100), torch.randn(2, 3, 32, 32), 100)


def test_stage_resolutions_and_preacts() -> None:
    feats = check_output(create_model("resnet8x4"), torch.randn(2, 3, 32, 32), 100)
    assert [f.shape[-1] for f in feats["feats"]] == [32, 32, 16, 8]
    assert feats["pooled"].shape == (2, 256)
    # preact_feats are the stage outputs before their last ReLU
    for f, p in zip(feats["feats"][1:], feats["preact_feats"][1:], strict=True):
        assert torch.equal(f, p.relu()) and (p < 0).any()


def test_single_channel_input_and_backward() -> None:
    model = create_model("resnet8", num_classes=10, in_channels=1)
    logits, feats = model(torch.randn(2, 1, 28, 28))
    logits.sum().backward()
    assert model.conv1.weight.grad is not None
    assert feats["feats"][-1].shape == (2, 64, 7, 7)


def test_fashion_mnist_models() -> None:
    x = torch.randn(2, 1, 28, 28)
    teacher, student = create_model("fmnist_cnn", num_classes=10), create_model("fmnist_tiny", num_classes=10)
    check_output(teacher, x, 10)
    check_output(student, x, 10)
    n_t, n_s = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    assert 100_000 < n_t < 1_000_000 and 10 <= n_t / n_s <= 20


def test_mlp_has_no_batch_norm() -> None:
    model = create_model("mlp", num_classes=10, in_channels=1, hidden=(32, 16))
    feats = check_output(model, torch.randn(3, 1, 28, 28), 10)
    assert model.stage_channels == [32, 16] and feats["pooled"].shape == (3, 16)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    check_output(create_model("mlp", num_classes=5, in_features=12, hidden=(4,)), torch.randn(2, 3, 2, 2), 5)


def test_torchvision_resnet18_matches_torchvision() -> None:
    model = create_model("tv:resnet18", num_classes=10)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    model.load_state_dict(reference.state_dict())  # same keys: modules are adopted, not nested
    x = torch.randn(2, 3, 64, 64)
    feats = check_output(model, x, 10)
    assert model.stage_channels == [64, 64, 128, 256, 512]
    assert [f.shape[-1] for f in feats["feats"]] == [16, 16, 8, 4, 2]
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], reference(x))


def test_torchvision_mobilenet_v2_stages() -> None:
    feats = check_output(create_model("tv:mobilenet_v2", num_classes=10), torch.randn(1, 3, 64, 64), 10)
    assert [f.shape[-1] for f in feats["feats"]] == [32, 16, 8, 4, 2]


def test_timm_model_when_installed() -> None:
    pytest.importorskip("timm")
    model = create_model("timm:resnet18", num_classes=10, in_channels=1)
    check_output(model, torch.randn(2, 1, 64, 64), 10)


def test_unknown_and_unsupported_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet9'.*resnet8x4"):
        create_model("resnet9")
    with pytest.raises(ValueError, match="not supported"):
        create_model("tv:vgg16")
    with pytest.raises(ValueError, match="3-channel"):
        create_model("tv:resnet18", in_channels=1)


def test_register_model() -> None:
    @register_model("test_only_linear")
    def build(num_classes: int = 100) -> nn.Module:
        return nn.Linear(4, num_classes)

    assert "test_only_linear" in list_models()
    assert create_model("test_only_linear", num_classes=3).out_features == 3
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_only_linear")(build)


@pytest.mark.parametrize("wrap", ["model", "state_dict", "plain"])
def test_load_checkpoint_formats(tmp_path: Path, wrap: str) -> None:
    source = create_model("resnet8", num_classes=10)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # as saved from a DDP model
    obj = state if wrap == "plain" else {wrap: state, "epoch": 240, "best_acc": 0.5}
    torch.save(obj, tmp_path / "ckpt.pth")
    target = create_model("resnet8", num_classes=10)
    assert load_checkpoint(target, tmp_path / "ckpt.pth") is target
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)


def test_load_checkpoint_explicit_key(tmp_path: Path) -> None:
    source = create_model("mlp", hidden=(8,))
    torch.save({"ema": source.state_dict()}, tmp_path / "ckpt.pth")
    target = load_checkpoint(create_model("mlp", hidden=(8,)), tmp_path / "ckpt.pth", key="ema")
    assert torch.equal(target.fc.weight, source.fc.weight)
    with pytest.raises(KeyError, match=r"'student'.*ema"):
        load_checkpoint(target, tmp_path / "ckpt.pth", key="student")


def test_load_checkpoint_mismatch_names_keys(tmp_path: Path) -> None:
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, tmp_path / "r8.pth")
    with pytest.raises(ValueError, match=r"36 missing keys: layer1\.1\.bn1\.bias"):
        load_checkpoint(create_model("resnet14", num_classes=10), tmp_path / "r8.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: .*block0"):
        torch.save(create_model("vgg8").state_dict(), tmp_path / "vgg.pth")
        load_checkpoint(create_model("resnet8"), tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match=r"other shapes .*fc\.weight \(10, 64\) vs \(100, 64\)"):
        load_checkpoint(create_model("resnet8", num_classes=100), tmp_path / "r8.pth")
