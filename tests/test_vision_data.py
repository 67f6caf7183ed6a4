"""Image-classification data: loaders read tiny files written here in the real on-disk formats."""

import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from eakd.vision import DATASETS, Recipe
from eakd.vision.datasets import (
    CIFAR100,
    IMAGENET,
    TensorImageDataset,
    build_dataset,
    build_datasets,
    find_fashion_mnist,
)
from eakd.vision.transforms import PadCropFlip, build_transform


def write_idx(path: Path, array: np.ndarray) -> None:
    """An (uncompressed) idx-ubyte file as in the MNIST/Fashion-MNIST distributions."""
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path, n_train: int = 6, n_test: int = 4) -> dict:
    """root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, torchvision's layout."""
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for train, n in ((True, n_train), (False, n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        split = "train" if train else "t10k"
        write_idx(folder / f"{split}-images-idx3-ubyte", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels)
        arrays[train] = (images, labels)
    return arrays


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 4) -> dict[bool, tuple]:
    """cifar-100-python/{train,test,meta} pickles with the keys of the official archive (their md5s differ
    from the real files': the loader checks that they exist, not their checksums)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for train, n in ((True, n_train), (False, n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = [int(i * 17 % 100) for i in range(n)]
        entry = {
            "filenames": [f"img_{i}.png" for i in range(n)],
            "batch_label": "training batch 1 of 1" if train else "testing batch 1 of 1",
            "fine_labels": labels,
            "coarse_labels": [label // 5 for label in labels],
            "data": images.reshape(n, 3072),
        }
        with open(folder / ("train" if train else "test"), "wb") as f:
            pickle.dump(entry, f)
        arrays[train] = (images, labels)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)],
                     "coarse_label_names": [f"s{i}" for i in range(20)]}, f)  # fmt: skip
    return arrays


def write_image(path: Path, size: tuple[int, int] = (40, 30), value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix == ".JPEG" else "PNG"
    Image.new("RGB", size, (value, 255 - value, 128)).save(path, format=fmt)


def test_fashion_mnist_from_folder(tmp_path: Path) -> None:
    arrays = write_fashion_mnist(tmp_path / "fm")
    for train in (True, False):
        ds = build_dataset("fashion_mnist", tmp_path / "fm", train=train, augment=False)
        images, labels = arrays[train]
        assert len(ds) == len(labels) and ds.images.shape == (len(labels), 1, 28, 28)
        assert ds.classes[9] == "Ankle boot"
        x, y = ds[1]
        assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and y == labels[1]
        expected = (torch.from_numpy(images[1]).float() / 255 - 0.2860) / 0.3530
        torch.testing.assert_close(x[0], expected)


def test_fashion_mnist_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion_mnist(tmp_path)
    assert find_fashion_mnist(tmp_path) == tmp_path / "FashionMNIST" / "raw"
    assert find_fashion_mnist(tmp_path / "elsewhere") is None
    assert len(build_dataset("fashion_mnist", tmp_path, train=False)) == 4
    # the default root is $EAKD_CACHE/data
    monkeypatch.setenv("EAKD_CACHE", str(tmp_path / "cache"))
    write_fashion_mnist(tmp_path / "cache" / "data")
    assert len(build_dataset("fashion_mnist", train=True)) == 6


def test_fashion_mnist_download_goes_through_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """download=True: torchvision's own download (faked here: it writes the files) fills the root."""
    calls = []

    def fake_download(self: torchvision.datasets.FashionMNIST) -> None:
        calls.append(self.raw_folder)
        write_fashion_mnist(Path(self.root))

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", fake_download)
    ds = build_dataset("fashion_mnist", tmp_path, train=False, download=True)
    assert len(ds) == 4 and calls == [str(tmp_path / "FashionMNIST" / "raw")]


def test_cifar100_pickles(tmp_path: Path) -> None:
    arrays = write_cifar100(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-100-python"):
        ds = build_dataset("cifar100", root, train=False, augment=False)
        images, labels = arrays[False]
        assert len(ds) == 4 and ds.classes[3] == "c3"
        assert torch.equal(ds.images, torch.from_numpy(images))  # rows are R, G, B planes of 32x32
        x, y = ds[2]
        assert x.shape == (3, 32, 32) and y == labels[2]
        mean, std = torch.tensor([0.5071, 0.4865, 0.4409]), torch.tensor([0.2673, 0.2564, 0.2762])
        pixel = torch.from_numpy(images[2, :, 5, 7]).float() / 255
        torch.testing.assert_close(x[:, 5, 7], (pixel - mean) / std)
    train = build_dataset("cifar100", tmp_path, train=True)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y == arrays[True][1][0] and len(train) == 6


def shifted_or_mirrored(out: torch.Tensor, image: torch.Tensor, pad: int) -> bool:
    """out is image shifted by at most pad pixels (zeros filled in), possibly mirrored left-right."""
    padded = torch.nn.functional.pad(image, (pad,) * 4)
    h, w = image.shape[-2:]
    for candidate in (out, out.flip(-1)):
        for top in range(2 * pad + 1):
            for left in range(2 * pad + 1):
                if torch.equal(candidate, padded[:, top : top + h, left : left + w]):
                    return True
    return False


def test_pad_crop_flip_single_and_batched() -> None:
    images = torch.randint(1, 256, (16, 2, 6, 5), dtype=torch.uint8)
    torch.manual_seed(0)
    out = PadCropFlip(2)(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert all(shifted_or_mirrored(o, i, 2) for o, i in zip(out, images, strict=True))
    assert len({o.float().sum().item() for o in out}) > 1  # each image has its own crop
    single = PadCropFlip(1)(images[0])
    assert single.shape == (2, 6, 5) and shifted_or_mirrored(single, images[0], 1)
    assert torch.equal(PadCropFlip(0, flip=False)(images), images)


def test_batched_fetch_matches_items(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    evaluation = build_dataset("cifar100", tmp_path, train=False)
    batch = evaluation.__getitems__([3, 0, 2])
    for (x, y), i in zip(batch, [3, 0, 2], strict=True):
        assert torch.equal(x, evaluation[i][0]) and y == evaluation[i][1]
    train = build_dataset("cifar100", tmp_path, train=True)
    mean = torch.tensor([0.5071, 0.4865, 0.4409]).view(3, 1, 1)
    std = torch.tensor([0.2673, 0.2564, 0.2762]).view(3, 1, 1)
    for (x, y), i in zip(train.__getitems__(list(range(6))), range(6), strict=True):
        pixels = ((x * std + mean) * 255).round().to(torch.uint8)
        assert shifted_or_mirrored(pixels, train.images[i], 4) and y == train.targets[i]


def test_train_augmentation_varies_eval_does_not(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    train = build_dataset("cifar100", tmp_path, train=True)
    evaluation = build_dataset("cifar100", tmp_path, train=False)
    torch.manual_seed(0)
    assert any(not torch.equal(train[0][0], train[0][0]) for _ in range(10))
    assert torch.equal(evaluation[0][0], evaluation[0][0])


def test_image_folder_imagenet_layout(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("val", 2)):
        for c, wnid in enumerate(["n02", "n01"]):
            for i in range(n):
                write_image(tmp_path / split / wnid / f"{wnid}_{i}.png", value=40 * c + i)
    train = build_dataset("imagenet", tmp_path, train=True, image_size=32)
    val = build_dataset("imagenet", tmp_path, train=False, image_size=32)
    assert len(train) == 6 and len(val) == 4 and val.classes == ["n01", "n02"]
    x, y = train[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    x, y = val[0]
    assert x.shape == (3, 32, 32) and y == 0


def test_tiny_imagenet_original_layout(tmp_path: Path) -> None:
    wnids = ["n0003", "n0001", "n0002"]
    for wnid in wnids:
        for i in range(2):
            write_image(tmp_path / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (64, 64))
        (tmp_path / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for i, wnid in enumerate(["n0002", "n0003", "n0001", "n0002"]):
        write_image(tmp_path / "val" / "images" / f"val_{i}.JPEG", (64, 64))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    train = build_dataset("tinyimagenet", tmp_path, train=True)
    val = build_dataset("tinyimagenet", tmp_path, train=False)
    assert len(train) == 6 and train.classes == sorted(wnids)
    assert [val[i][1] for i in range(4)] == [1, 2, 0, 1]
    assert val[0][0].shape == train[0][0].shape == (3, 64, 64)
    # without the train folder the classes come from wnids.txt
    (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for path in sorted((tmp_path / "train").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "train").rmdir()
    assert [build_dataset("tinyimagenet", tmp_path, train=False)[i][1] for i in range(4)] == [1, 2, 0, 1]


def test_two_views_weak_and_strong(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    ds = build_dataset("fashion_mnist", tmp_path, two_views=True)
    weak, strong, y = ds[3]
    assert weak.shape == strong.shape == (1, 28, 28) and weak.dtype == strong.dtype == torch.float32
    assert y == 3 and ds.classes[0] == "T-shirt/top" and len(ds) == 6
    write_cifar100(tmp_path / "c")
    weak, strong, _ = build_dataset("cifar100", tmp_path / "c", two_views=True, strong="randaugment")[0]
    assert weak.shape == strong.shape == (3, 32, 32)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert [tuple(t.shape) for t in batch] == [(4, 1, 28, 28), (4, 1, 28, 28), (4,)]


def test_strong_view_policies_run_on_tensors_and_pil() -> None:
    tensor_image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert build_transform(CIFAR100, True, strong="autoaugment")(tensor_image).shape == (3, 32, 32)
    pil_image = Image.new("RGB", (80, 70), (10, 200, 30))
    out = build_transform(IMAGENET, True, image_size=48, strong="autoaugment")(pil_image)
    assert out.shape == (3, 48, 48) and type(out) is torch.Tensor


def test_synthetic_is_deterministic_and_learnable() -> None:
    a = build_dataset("synthetic", num_samples=40, num_classes=4, channels=1, size=16, augment=False)
    b = build_dataset("synthetic", num_samples=40, num_classes=4, channels=1, size=16, augment=False)
    test = build_dataset("synthetic", train=False, num_samples=40, num_classes=4, channels=1, size=16)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, test.images)
    assert a[0][0].shape == (1, 16, 16) and a.classes == ["0", "1", "2", "3"]
    # nearest class mean on train classifies the test split well above chance
    means = torch.stack([a.images[a.targets == c].float().mean(0) for c in range(4)])
    dist = (test.images.float()[:, None] - means[None]).flatten(2).pow(2).sum(-1)
    assert (dist.argmin(1) == test.targets).float().mean() > 0.9


def test_build_datasets(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, n_train=10, n_test=8)
    cfg = SimpleNamespace(name="fashion_mnist", root=str(tmp_path), download=False, augment=True,
                          two_views=False, train_subset=4, eval_subset=None, options={})  # fmt: skip
    train, evaluation, info = build_datasets(cfg)
    assert info["num_classes"] == 10 and info["in_channels"] == 1 and len(info["classes"]) == 10
    assert len(train) == 4 and len(evaluation) == 8
    assert [train[i][1] for i in range(4)] == [0, 3, 6, 9]  # spread over the split
    x, y = next(iter(torch.utils.data.DataLoader(train, batch_size=3)))
    assert x.shape == (3, 1, 28, 28) and y.dtype == torch.int64
    synthetic = SimpleNamespace(name="synthetic", options={"num_samples": 16, "channels": 3, "size": 8})
    _, _, info = build_datasets(synthetic)
    assert info["in_channels"] == 3 and info["num_classes"] == 10


def test_missing_data_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="make fetch") as err:
        build_dataset("fashion_mnist", tmp_path / "nothing")
    assert str(tmp_path / "nothing" / "FashionMNIST" / "raw") in str(err.value)
    assert "data.download=true" in str(err.value)
    monkeypatch.setenv("EAKD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="make fetch") as err:
        build_dataset("fashion_mnist")
    assert str(tmp_path / "cache" / "data" / "FashionMNIST" / "raw") in str(err.value)
    assert not (tmp_path / "cache").exists()  # looking creates nothing
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*data\.download=true"):
        build_dataset("cifar100", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"imagenet not found: looked for .*train"):
        build_dataset("imagenet", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"tiny-imagenet-200\.zip"):
        build_dataset("tinyimagenet", None)
    with pytest.raises(ValueError, match="known: cifar100"):
        build_dataset("cifar10", tmp_path)
    with pytest.raises(ValueError, match=r"data set .cifar100. takes no option\(s\) \[.num_samples.\]"):
        build_dataset("cifar100", tmp_path, num_samples=3)


def test_user_registered_data_set(tmp_path: Path) -> None:
    """A data set added with DATASETS.register is built from a config by name, with its own recipe."""
    seen = []

    @DATASETS.register("test_user_images")
    def user_images(root: str | None, train: bool, download: bool, n: int = 8) -> tuple:
        seen.append((root, train, download))
        images = torch.full((n, 3, 12, 12), 255 if train else 0, dtype=torch.uint8)
        recipe = Recipe(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=12, pad=1)
        return TensorImageDataset(images, torch.arange(n) % 2, ["even", "odd"]), recipe

    cfg = SimpleNamespace(name="test_user_images", root=str(tmp_path), download=False, augment=False,
                          two_views=False, train_subset=None, eval_subset=3, options={"n": 6})  # fmt: skip
    train, evaluation, info = build_datasets(cfg)
    assert seen == [(str(tmp_path), True, False), (str(tmp_path), False, False)]
    assert info == {"num_classes": 2, "in_channels": 3, "classes": ["even", "odd"]}
    assert len(train) == 6 and len(evaluation) == 3
    x, y = train[1]
    assert x.shape == (3, 12, 12) and torch.equal(x, torch.ones(3, 12, 12)) and y == 1
    assert torch.equal(evaluation[0][0], -torch.ones(3, 12, 12))
    with pytest.raises(ValueError, match="did you mean 'test_user_images'"):
        build_datasets(SimpleNamespace(name="test_user_image"))


@pytest.mark.skipif(find_fashion_mnist() is None, reason="Fashion-MNIST is not installed here")
def test_real_fashion_mnist() -> None:
    train = build_dataset("fashion_mnist", train=True)
    test = build_dataset("fashion_mnist", train=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.targets).tolist() == [1000] * 10


def test_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eakd.paths import cache_dir

    monkeypatch.setenv("EAKD_CACHE", str(tmp_path / "c"))
    assert cache_dir("a", "b", create=False) == tmp_path / "c" / "a" / "b"
    assert not (tmp_path / "c").exists()
    assert cache_dir("a").is_dir()
