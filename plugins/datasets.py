"""The datasets of ``lilnetx.data`` (MNIST, digits, CIFAR, ImageNet-style folders), as a plugin."""

from __future__ import annotations

from lilnetx.data import DATASETS
from zoo.hookspecs import DatasetRegistrar, hookimpl


@hookimpl
def lilnetx_register_datasets(register: DatasetRegistrar) -> None:
    for name, loader in DATASETS.items():
        register(name, loader, description=(loader.__doc__ or "").strip().splitlines()[0])
