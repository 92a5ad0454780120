"""JSON-serialisable descriptions of an artifact: what the catalog stores and a static zoo's index holds.

They are computed from a verified artifact (see ``zoo.ingest.describe``), never typed in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import InvalidNameError
from zoo.names import check_part, check_sha256


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
            check_part(record.arch, "architecture name")
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(record.size_bytes, int) or record.size_bytes <= 0:
            raise ValueError(f"malformed artifact record: size_bytes={record.size_bytes!r}")
        return record
