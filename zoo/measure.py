"""Measure an artifact's accuracy on its dataset's test split, offline and within a time limit.

A header's ``metrics`` are what the publisher CLAIMS; :func:`measure` runs the decoded model over the test
split of the header's dataset (loaded through the dataset plugins, never downloaded) and returns what it
MEASURED. Datasets read from files (cifar10, mnist-idx, ...) need a local folder: ``data_root`` (the
``--data-root`` option), or ``$LILNETX_DATA_ROOT/<dataset>``. ``LILNETX_MEASURE_TIMEOUT`` (seconds,
default :data:`DEFAULT_TIMEOUT_S`; ``0`` turns measuring off) bounds the time spent; whatever cannot be
measured raises :class:`MeasurementUnavailable` naming why and the fix, and the entry stays claimed-only.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.catalog.records import Measurement
from zoo.errors import MeasurementRefused, MeasurementUnavailable, ZooError
from zoo.file_options import within

if TYPE_CHECKING:  # torch is imported when measuring, not when this module is (``import zoo`` stays cheap)
    from torch import nn
    from torch.utils.data import Dataset

TIMEOUT_ENV = "LILNETX_MEASURE_TIMEOUT"
DATA_ROOT_ENV = "LILNETX_DATA_ROOT"
DEFAULT_TIMEOUT_S = 300.0
BATCH = 500
REJECT_BELOW_CLAIM = 0.005  # a remote entry measuring more than 0.5 points below its claimed top-1 is refused


def timeout_from_env() -> float:
    """``LILNETX_MEASURE_TIMEOUT`` in seconds (default :data:`DEFAULT_TIMEOUT_S`); ``ZooError`` if malformed."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise ZooError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds >= 0; e.g. {TIMEOUT_ENV}=120 "
                       "(0 turns accuracy measuring off)")
    return value


def data_root_from_env() -> Path | None:
    raw = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(raw).expanduser() if raw else None


def _loader_options(loader: Any) -> set[str]:
    try:
        return set(inspect.signature(loader).parameters)
    except (TypeError, ValueError):
        return set()


def _has_default_root(loader: Any) -> bool:
    """Whether the loader reads a default folder when no ``root`` is given."""
    try:
        parameter = inspect.signature(loader).parameters["root"]
    except (TypeError, ValueError, KeyError):
        return False
    return parameter.default is not inspect.Parameter.empty


@functools.lru_cache(maxsize=4)
def _test_split(name: str, root: str | None, options: tuple[tuple[str, Any], ...]) -> tuple[Dataset, int,
                                                                                           tuple[int, ...]]:
    """The test split of dataset ``name`` (cached per process: seeding measures several models on MNIST)."""
    from zoo.registry import get_dataset

    kwargs = dict(options)
    if root is not None:
        kwargs["root"] = root
    bundle = get_dataset(name, **kwargs)
    return bundle.test, bundle.num_classes, tuple(bundle.input_size)


def _dataset(header: dict[str, Any], data_root: Path | None) -> tuple[str, Dataset]:
    """The header's dataset's test split, loaded offline; :class:`MeasurementUnavailable` when it cannot be."""
    from zoo.registry import UnknownNameError, get_registry

    name = header.get("dataset")
    if not isinstance(name, str) or not name:
        raise MeasurementUnavailable("the artifact names no dataset to measure it on")
    try:
        spec = get_registry().dataset(name)
    except UnknownNameError as exc:
        raise MeasurementUnavailable(f"{exc}; install the plugin that provides it") from None
    accepted = _loader_options(spec.loader)
    recipe_kwargs = (header.get("recipe") or {}).get("dataset_kwargs") or {}
    options = {k: v for k, v in recipe_kwargs.items()  # only what the dataset declares; else its defaults
               if k in accepted and k in spec.options and within(v, spec.options[k])}
    if "augment" in accepted:
        options["augment"] = False
    root = None
    if "root" in accepted:
        base = data_root or data_root_from_env()
        if base is not None:
            root = base / spec.name if (base / spec.name).is_dir() else base
            if not root.is_dir():
                raise MeasurementUnavailable(f"dataset {spec.name!r}: no folder {root}; check --data-root / "
                                             f"{DATA_ROOT_ENV}")
        elif not _has_default_root(spec.loader):  # else the loader reads its default folder (Fashion-MNIST's)
            raise MeasurementUnavailable(
                f"dataset {spec.name!r} is read from files: give its folder with --data-root DIR or set "
                f"{DATA_ROOT_ENV} to a folder holding a {spec.name}/ sub-folder")
    try:
        test, classes, size = _test_split(spec.name, None if root is None else str(root),
                                          tuple(sorted(options.items())))
    except (ValueError, OSError, ImportError) as exc:  # zoo.datasets.DatasetError is a ValueError
        raise MeasurementUnavailable(f"cannot load dataset {spec.name!r} offline: {exc}") from None
    expected_size = header.get("input_size")
    for what, theirs, ours in (("classes", header.get("num_classes"), classes),
                               ("input size", None if expected_size is None else list(expected_size), list(size))):
        if theirs is not None and theirs != ours:
            raise MeasurementRefused(f"the artifact expects {what} {theirs}, dataset {spec.name!r} has "
                                         f"{ours}")
    return spec.name, test


def measure(model: nn.Module, header: dict[str, Any], *, data_root: Path | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> Measurement:
    """Top-1 / top-5 of ``model`` (decoded from an artifact with ``header``) on its dataset's test split.

    Batched, by ``lilnetx.evaluate``; :class:`MeasurementUnavailable` when measuring is off
    (``timeout_s == 0``), the dataset is not available offline or does not fit the model, or it takes longer
    than ``timeout_s`` seconds (checked after loading the data and after every batch).
    """
    if timeout_s <= 0:
        raise MeasurementUnavailable(f"accuracy measuring is off ({TIMEOUT_ENV}=0 / --measure-timeout 0)")
    from torch.utils.data import DataLoader

    from lilnetx import evaluate

    start = time.monotonic()
    dataset, test = _dataset(header, data_root)
    if len(test) == 0:
        raise MeasurementUnavailable(f"the test split of {dataset} is empty")

    def in_time(seen: int) -> None:
        if time.monotonic() - start > timeout_s:
            raise MeasurementUnavailable(f"measuring on {dataset} took longer than {timeout_s:g} s (stopped after "
                                         f"{seen:,} of {len(test):,} images); raise {TIMEOUT_ENV} / "
                                         "--measure-timeout")

    result = evaluate(model, DataLoader(test, batch_size=BATCH), before_batch=in_time)
    return Measurement(top1=result["top1"], top5=result["top5"], dataset=dataset, images=len(test),
                       measured_at=datetime.now(UTC))


def check_claim(name: str, claimed_top1: float | None, measured: Measurement) -> str | None:
    """Why a claimed top-1 is refused (more than :data:`REJECT_BELOW_CLAIM` above the measured one), or None."""
    if claimed_top1 is None or measured.top1 >= claimed_top1 - REJECT_BELOW_CLAIM:
        return None
    return (f"metrics.top1: claimed {100 * claimed_top1:.2f} %, measured {100 * measured.top1:.2f} % on "
            f"{measured.images:,} {measured.dataset} test images (more than {100 * REJECT_BELOW_CLAIM:g} points "
            f"below the claim)")
