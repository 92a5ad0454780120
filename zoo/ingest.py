"""Describe an artifact for the catalog: verify it, read its header, decode it and measure the model.

Every number of the resulting :class:`ArtifactRecord` is computed from the file itself, which is read,
verified and parsed once (``lilnetx.read_artifact``) and decoded once (``lilnetx.from_artifact``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

import lilnetx
from lilnetx.artifact.rebuild import read_and_load
from lilnetx.metrics import ratio
from zoo.catalog.records import ArtifactRecord, LayerRecord, MetricsRecord
from zoo.file_options import check_header_claims


def _layers(stats: dict[str, Any], header_layers: list[dict[str, Any]]) -> list[LayerRecord]:
    """Per module: shape, sparsity and MACs of the decoded weights, bits of its coded weight and bias."""
    coded = {layer["name"]: layer for layer in header_layers}
    records = []
    for name, entry in stats["layers"].items():
        w = entry["weights"]
        prefix = f"{name}." if name else ""
        tensors = [coded[t] for t in (f"{prefix}weight", f"{prefix}bias") if t in coded]
        weight = coded.get(f"{prefix}weight")
        records.append(LayerRecord(
            name=name, latent_group=weight["group"] if weight else None, shape=list(entry["shape"]),
            params=w["params"],
            coded_bits=int(sum(t["coded_bits"] for t in tensors)) if tensors else None,
            estimated_bits=float(sum(t["est_bits"] for t in tensors)) if tensors else None,
            conv_slice_sparsity=ratio(w["zero_slices"], w["slices"]) if entry["kxk"] else None,
            weight_sparsity=ratio(w["zero_params"], w["params"]),
            macs_dense=entry.get("macs_dense"), macs_sparse=entry.get("macs_sparse"),
        ))
    return records


@dataclass(frozen=True)
class Described:
    """An artifact read once: its record for the catalog, its decoded model and its verified header."""

    record: ArtifactRecord
    model: nn.Module
    header: dict[str, Any]


def describe(path: Path) -> Described:
    """Verify the ``.lnx`` file at ``path``, decode it and describe it, reading and parsing it once.

    Raises ``lilnetx.ArtifactError`` (a ``ValueError``) when it is not a valid artifact.
    """
    artifact, model = read_and_load(path)  # the architecture checked against the header before decoding
    info, header = artifact.info(path), artifact.header
    check_header_claims(header, str(path))
    input_size = header.get("input_size")
    stats = lilnetx.stats(model, tuple(input_size) if input_size else None,
                          compressed={layer["name"] for layer in header.get("layers") or []})
    state = model.state_dict().values()
    metrics = header.get("metrics") or {}
    record = ArtifactRecord(
        sha256=info.sha256, size_bytes=info.size_bytes, format_version=int(header["format_version"]),
        arch=info.arch, arch_kwargs=dict(header.get("arch_kwargs") or {}), dataset=header.get("dataset"),
        num_classes=header.get("num_classes"), input_size=input_size, mean=header.get("mean"),
        std=header.get("std"),
        metrics=MetricsRecord(
            top1=metrics.get("top1"), top5=metrics.get("top5"),
            fp32_bytes=4 * sum(t.numel() for t in state if t.is_floating_point()),
            size_parts=dict(info.parts),
            params=sum(p.numel() for p in model.parameters()), estimated_bits=info.estimated_bits,
            coded_latent_bytes=info.coded_latent_bytes, conv_slice_sparsity=stats["conv_slice_sparsity"],
            weight_sparsity=stats["weight_sparsity"], macs_dense=stats["macs_dense"],
            macs_sparse=stats["macs_sparse"],
        ),
        recipe=dict(header.get("recipe") or {}), versions=dict(header.get("versions") or {}),
        layers=_layers(stats, header.get("layers") or []), header=header,
    )
    return Described(record, model, header)
