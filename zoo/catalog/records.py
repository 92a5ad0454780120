"""JSON-serialisable descriptions of an artifact: what the catalog stores and a static zoo's index holds.

They are computed from a verified artifact (see ``zoo.ingest.describe``), never typed in;
``disagreements`` compares a record that only claims to describe a file (a remote zoo's index) with one
computed from the file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import InvalidNameError
from zoo.names import check_arch, check_sha256

# what the catalog lists, filters on and shows on a card, besides the sha256 the bytes were checked against
CLAIMS = ("arch", "arch_kwargs", "dataset", "num_classes", "input_size", "mean", "std", "size_bytes",
          "format_version", "metrics")


@dataclass(frozen=True)
class LayerRecord:
    """One conv / linear layer of a decoded model."""

    name: str
    latent_group: str | None
    shape: list[int]
    params: int
    coded_bits: int | None
    estimated_bits: float | None
    slice_sparsity: float
    unstructured_sparsity: float
    macs_dense: int | None
    macs_sparse: int | None


@dataclass(frozen=True)
class MetricsRecord:
    """Accuracy (fractions in [0, 1]), sizes, sparsity and MACs of a decoded model.

    ``params`` counts every parameter; ``fp32_bytes`` is 4 bytes per floating-point value of the state_dict.
    """

    top1: float | None
    top5: float | None
    fp32_bytes: int
    size_parts: dict[str, int]
    params: int
    estimated_bits: float | None
    coded_latent_bytes: int | None
    slice_sparsity: float
    unstructured_sparsity: float
    macs_dense: int | None
    macs_sparse: int | None


@dataclass(frozen=True)
class ArtifactRecord:
    """Everything the catalog knows about one ``.lnx`` file."""

    sha256: str
    size_bytes: int
    format_version: int
    arch: str
    arch_kwargs: dict[str, Any]
    dataset: str | None
    num_classes: int | None
    input_size: list[int] | None
    mean: list[float] | None
    std: list[float] | None
    metrics: MetricsRecord
    recipe: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerRecord] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactRecord:
        """Rebuild a record (e.g. from a static zoo's ``index.json``); ``ValueError`` when malformed."""
        try:
            fields = dict(data)
            fields["metrics"] = MetricsRecord(**fields["metrics"])
            fields["layers"] = [LayerRecord(**layer) for layer in fields.get("layers", [])]
            record = cls(**fields)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed artifact record: {exc}") from None
        try:
            check_sha256(record.sha256)
            check_arch(record.arch)
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(record.size_bytes, int) or record.size_bytes <= 0:
            raise ValueError(f"malformed artifact record: size_bytes={record.size_bytes!r}")
        return record


def _same(claimed: Any, actual: Any) -> bool:
    """Equal, floats up to rounding (a record may have been through JSON and another platform's torch)."""
    if isinstance(claimed, dict) and isinstance(actual, dict):
        return claimed.keys() == actual.keys() and all(_same(claimed[k], actual[k]) for k in claimed)
    if isinstance(claimed, list | tuple) and isinstance(actual, list | tuple):
        return len(claimed) == len(actual) and all(_same(c, a) for c, a in zip(claimed, actual, strict=True))
    if isinstance(claimed, float) or isinstance(actual, float):
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (claimed, actual))
        return numbers and math.isclose(claimed, actual, rel_tol=1e-6, abs_tol=1e-12)
    return type(claimed) is type(actual) and claimed == actual


def disagreements(claimed: ArtifactRecord, actual: ArtifactRecord) -> list[str]:
    """``"field: claimed X, the artifact says Y"`` for every :data:`CLAIMS` field on which they differ."""
    found = []
    for key in CLAIMS:
        mine, theirs = getattr(claimed, key), getattr(actual, key)
        pairs = ([(f"metrics.{k}", v, vars(theirs)[k]) for k, v in vars(mine).items()] if key == "metrics"
                 else [(key, mine, theirs)])
        found += [f"{what}: claimed {c!r}, the artifact says {a!r}" for what, c, a in pairs if not _same(c, a)]
    return found
