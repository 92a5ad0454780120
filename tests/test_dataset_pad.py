"""The MNIST loaders' ``pad`` option: black borders in raw pixel space, the bundle's input size, bad values,
and the zoo's measurement re-creating the padded dataset from an artifact's recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_data import write_mnist_idx

import lilnetx
from plugins import datasets as data
from zoo.errors import MeasurementUnavailable
from zoo.measure import measure
from zoo.registry import create_model


def _images(dataset, n: int) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(n)])


def _check_padded(padded: data.DatasetBundle, plain: data.DatasetBundle, pad: int) -> None:
    c, h, w = plain.input_size
    assert padded.input_size == (c, h + 2 * pad, w + 2 * pad)
    assert (padded.mean, padded.std) == (plain.mean, plain.std)
    for split in ("train", "test"):
        big, small = _images(getattr(padded, split), 5), _images(getattr(plain, split), 5)
        assert big.shape[1:] == padded.input_size
        assert torch.equal(big[:, :, pad:-pad, pad:-pad], small)  # the image itself is untouched
        black = (0.0 - padded.mean[0]) / padded.std[0]
        border = torch.ones(big.shape[1:], dtype=torch.bool)
        border[:, pad:-pad, pad:-pad] = False
        assert torch.allclose(big[:, border], torch.full_like(big[:, border], black), atol=1e-6)
        assert [getattr(padded, split)[i][1] for i in range(5)] == [getattr(plain, split)[i][1] for i in range(5)]


def test_mnist_pad_gives_32x32_with_black_borders() -> None:
    _check_padded(data.mnist(pad=2), data.mnist(), 2)


@pytest.mark.parametrize("pad", [1, 3])
def test_mnist_idx_pad_keeps_the_unpadded_statistics(tmp_path: Path, pad: int) -> None:
    folder = write_mnist_idx(tmp_path / "mnist", gz=False, n_train=8, n_test=6)
    padded, plain = data.mnist_idx(folder, pad=pad), data.mnist_idx(folder)
    _check_padded(padded, plain, pad)
    assert len(padded.train) == 8 and len(padded.test) == 6


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, None])
def test_bad_pad_names_the_fix(tmp_path: Path, bad: object) -> None:
    for loader in (lambda: data.mnist(pad=bad), lambda: data.mnist_idx(tmp_path, pad=bad)):
        with pytest.raises(data.DatasetError, match=r"pad must be a non-negative integer.*\{pad: 2\}"):
            loader()


def test_measure_recreates_the_padded_dataset_from_the_recipe(tmp_path: Path) -> None:
    folder = write_mnist_idx(tmp_path / "mnist-idx", gz=False, n_train=8, n_test=7)
    model = lilnetx.reparameterize(create_model("resnet20", input_size=(1, 32, 32), width=0.25))
    path = tmp_path / "a.lnx"
    recipe = {"arch": "resnet20", "dataset": "mnist-idx", "dataset_kwargs": {"pad": 2}}
    lilnetx.save(model, path, metadata={"dataset": "mnist-idx", "recipe": recipe})
    loaded, header = lilnetx.load(path), lilnetx.read_header(path)
    assert header["input_size"] == [1, 32, 32]
    assert measure(loaded, header, data_root=folder).images == 7
    header["recipe"]["dataset_kwargs"] = {}  # without the pad the images are 28x28: refused, not mis-measured
    with pytest.raises(MeasurementUnavailable, match="input size"):
        measure(loaded, header, data_root=folder)
