"""The zoo's Python API: ``list_models``, ``pull`` and ``load`` (re-exported as ``zoo.list_models``...).

Configured by the environment: ``LILNETX_DB`` (catalog URL), ``LILNETX_HOME`` (cache and store),
``LILNETX_ZOO_URL`` (a remote static zoo) and ``LILNETX_OFFLINE=1`` (cache only). A catalog that is empty
and was never seeded is seeded once with the shipped models on first use (``zoo.seed.seed_on_first_use``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from zoo.seed import seed_on_first_use
from zoo.service import Zoo

if TYPE_CHECKING:
    from torch import nn


def _zoo() -> Zoo:
    zoo = Zoo.from_env()
    seed_on_first_use(zoo)
    return zoo


def list_models(pattern: str = "*", *, dataset: str | None = None, max_bytes: int | None = None,
                min_accuracy: float | None = None, min_slice_sparsity: float | None = None) -> list[str]:
    """Names of the zoo entries matching the fnmatch ``pattern`` and the filters, sorted.

    ``min_accuracy`` (top-1) and ``min_slice_sparsity`` are fractions in [0, 1]; ``max_bytes`` bounds the
    artifact's file size.
    """
    entries = _zoo().list(pattern, dataset=dataset, max_bytes=max_bytes, min_accuracy=min_accuracy,
                                  min_slice_sparsity=min_slice_sparsity)
    return [e["name"] for e in entries]


def pull(name: str, dest: str | Path | None = None) -> Path:
    """The verified ``.lnx`` artifact of entry ``name`` (cached; sha256 checked on every pull).

    With ``dest`` (a folder, or a path ending in ``.lnx``) a copy is written there.
    """
    return _zoo().pull(name, dest)


def load(name: str, *, slim: bool = False) -> nn.Module:
    """Pull entry ``name`` and decode it: an eval-mode plain PyTorch module with ordinary weights.

    ``slim=True``: the fast inference form, a ``lilnetx.runtime.SparseRuntime`` (an ``nn.Module``): BatchNorm
    folded, zero channels removed, each convolution running the slice-sparse kernel or dense ``conv2d``,
    whichever measured faster on this machine, traced to frozen TorchScript per input shape; same outputs.
    """
    import lilnetx

    return lilnetx.load(pull(name), slim=slim)
