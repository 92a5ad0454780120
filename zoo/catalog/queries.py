"""Catalog queries. Each takes a ``Session``; the caller owns the transaction (``engine.session_scope``)."""

from __future__ import annotations

import difflib
import fnmatch
import logging
import math
import statistics
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from zoo.catalog.models import (
    Architecture,
    Artifact,
    BenchmarkResult,
    CatalogState,
    LayerStat,
    Metrics,
    TrainingRun,
    ZooEntry,
)
from zoo.catalog.records import (
    ArtifactRecord,
    LayerRecord,
    Measurement,
    MetricsRecord,
    RecordError,
    disagreements,
)
from zoo.errors import EntryExistsError, EntryNotFoundError
from zoo.names import split_name

STORE_URI = "store:"  # prefix of the uri of an artifact that only the local store holds
log = logging.getLogger(__name__)


def get_entry(session: Session, name: str) -> ZooEntry | None:
    return session.scalar(select(ZooEntry).where(ZooEntry.name == name))


def require_entry(session: Session, name: str) -> ZooEntry:
    """The entry called ``name``; :class:`EntryNotFoundError` with close names otherwise."""
    split_name(name)
    entry = get_entry(session, name)
    if entry is None:
        close = difflib.get_close_matches(name, session.scalars(select(ZooEntry.name)).all(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " See `lilnetx zoo list`."
        raise EntryNotFoundError(f"no zoo entry named {name!r}.{hint}")
    return entry


def find_entries(
    session: Session,
    pattern: str = "*",
    *,
    dataset: str | None = None,
    max_bytes: int | None = None,
    min_accuracy: float | None = None,
    min_slice_sparsity: float | None = None,
) -> list[ZooEntry]:
    """Entries whose name matches the fnmatch ``pattern`` and every given filter, sorted by name.

    ``min_accuracy`` is top-1 as a fraction, measured when it was, else claimed; entries with neither never
    pass it. ``min_slice_sparsity`` bounds the conv slice sparsity (zero K×K slices of the convolutions with
    K×K > 1); entries without such convolutions never pass it.
    """
    query = _filtered(select(ZooEntry), dataset, max_bytes, min_accuracy, min_slice_sparsity)
    return [e for e in session.scalars(query) if fnmatch.fnmatchcase(e.name, pattern)]


def _filtered(query: Select[Any], dataset: str | None, max_bytes: int | None, min_accuracy: float | None,
              min_slice_sparsity: float | None) -> Select[Any]:
    """``query`` over entries joined with their artifact and metrics, filtered as :func:`find_entries` says."""
    query = query.join(ZooEntry.artifact).join(Artifact.metrics).order_by(ZooEntry.name)
    if dataset is not None:
        query = query.where(ZooEntry.dataset == dataset)
    if max_bytes is not None:
        query = query.where(Artifact.size_bytes <= max_bytes)
    if min_accuracy is not None:  # the figure shown: measured when measured, else the header's claim
        query = query.where(func.coalesce(Metrics.measured_top1, Metrics.top1) >= min_accuracy)
    if min_slice_sparsity is not None:
        query = query.where(Metrics.conv_slice_sparsity >= min_slice_sparsity)
    return query


def _architecture(session: Session, name: str) -> Architecture:
    arch = session.scalar(select(Architecture).where(Architecture.name == name))
    if arch is None:
        arch = Architecture(name=name)
        session.add(arch)
    return arch


def get_artifact(session: Session, sha256: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.sha256 == sha256))


def _describe(session: Session, artifact: Artifact, record: ArtifactRecord) -> None:
    """Set every described column of ``artifact`` (and its metrics, layers and run) from ``record``."""
    for key in ("size_bytes", "format_version", "arch", "arch_kwargs", "dataset", "num_classes", "input_size",
                "mean", "std", "header"):
        setattr(artifact, key, getattr(record, key))
    m = {**vars(record.metrics), "size_bytes": record.size_bytes}
    if artifact.metrics is None:
        artifact.metrics = Metrics(**m)
    else:
        for key, value in m.items():
            setattr(artifact.metrics, key, value)
    if artifact.run is None:
        artifact.run = TrainingRun(recipe=record.recipe, versions=record.versions)
    else:
        artifact.run.recipe, artifact.run.versions = record.recipe, record.versions
    if artifact.layers:
        artifact.layers.clear()
        session.flush()  # delete the old rows before their (artifact, name) keys are inserted again
    artifact.layers = [LayerStat(position=i, **vars(layer)) for i, layer in enumerate(record.layers)]


def upsert_artifact(session: Session, record: ArtifactRecord, uri: str, *, verified: bool) -> Artifact:
    """The artifact row of ``record`` (created with its metrics, layers and run when new).

    ``verified`` says that ``record`` was computed from the bytes here (not copied from a remote index): it
    then replaces an unverified row's claims, and drops the remote entries that named the artifact when it is
    not what their index claimed. A remote ``uri`` replaces a ``store:`` one, so that a copy missing from the
    store can be fetched again.
    """
    artifact = get_artifact(session, record.sha256)
    if artifact is None:
        artifact = Artifact(sha256=record.sha256, uri=uri, verified=verified)
        session.add(artifact)
        _describe(session, artifact, record)
        return artifact
    if verified and not artifact.verified:
        if found := disagreements(artifact_record(artifact), record):
            for entry in list(artifact.entries):
                log.warning("dropping %s: the remote index it came from does not describe its artifact (%s)",
                            entry.name, "; ".join(found))
                session.delete(entry)
            session.flush()
            session.expire(artifact, ["entries"])
        _describe(session, artifact, record)
        artifact.verified = True
    if not uri.startswith(STORE_URI):
        artifact.uri = uri
    return artifact


def add_entry(session: Session, name: str, dataset: str, record: ArtifactRecord, uri: str, *,
              verified: bool, replace: bool = False) -> ZooEntry:
    """Catalogue ``record`` as entry ``name``; a no-op when the entry already points at this artifact.

    An entry of that name with another artifact raises :class:`EntryExistsError` unless ``replace``;
    ``verified`` as for :func:`upsert_artifact`.
    """
    arch_name, tag = split_name(name)
    artifact = upsert_artifact(session, record, uri, verified=verified)
    entry = get_entry(session, name)
    if entry is not None:
        if entry.artifact.sha256 == record.sha256:
            return entry
        if not replace:
            raise EntryExistsError(
                f"zoo entry {name!r} already exists with artifact {entry.artifact.sha256[:12]}; pick another "
                f"tag, or `lilnetx zoo remove {name}` first"
            )
        entry.artifact = artifact
        entry.dataset = dataset
        return entry
    entry = ZooEntry(name=name, tag=tag, dataset=dataset, architecture=_architecture(session, arch_name),
                     artifact=artifact)
    session.add(entry)
    session.flush()
    return entry


def remove_entry(session: Session, name: str) -> None:
    """Delete entry ``name`` (its artifact row, metrics and benchmarks stay: other tags may share them)."""
    session.delete(require_entry(session, name))


BENCHMARK_VARIANTS = ("dense", "slim", "sparse", "onnxruntime")


def add_benchmark(session: Session, name: str, *, machine: str, device: str, threads: int, batch: int,
                  latencies_ms: list[float], variant: str = "dense", machine_info: dict[str, Any] | None = None,
                  slim: bool | None = None) -> BenchmarkResult:
    """Record latencies (milliseconds per batch) of entry ``name``'s model run as ``variant`` on one machine.

    ``variant`` is one of :data:`BENCHMARK_VARIANTS`; ``machine_info`` describes the machine (CPU model, ISA
    flags, library versions); ``slim`` defaults to ``variant != "dense"``.
    """
    if not latencies_ms:
        raise RecordError("latencies_ms", "at least one timed run", latencies_ms)
    if variant not in BENCHMARK_VARIANTS:
        raise RecordError("variant", f"one of {', '.join(BENCHMARK_VARIANTS)}", variant)
    ordered = sorted(latencies_ms)
    result = BenchmarkResult(
        artifact=require_entry(session, name).artifact, machine=machine, device=device, threads=threads,
        batch=batch, slim=variant != "dense" if slim is None else slim, variant=variant,
        machine_info=machine_info, latencies_ms=list(latencies_ms),
        mean_ms=statistics.fmean(ordered), p50_ms=statistics.median(ordered),
        p90_ms=ordered[math.ceil(0.9 * len(ordered)) - 1],
    )
    session.add(result)
    session.flush()
    return result


def benchmarks(session: Session, name: str) -> list[BenchmarkResult]:
    """Every benchmark of entry ``name``'s artifact, newest first."""
    artifact = require_entry(session, name).artifact
    query = (select(BenchmarkResult).where(BenchmarkResult.artifact_id == artifact.id)
             .order_by(BenchmarkResult.measured_at.desc(), BenchmarkResult.id.desc()))
    return list(session.scalars(query))


def artifact_record(artifact: Artifact) -> ArtifactRecord:
    """The :class:`ArtifactRecord` a catalogued artifact was added from."""
    m = artifact.metrics
    return ArtifactRecord(
        sha256=artifact.sha256, size_bytes=artifact.size_bytes, format_version=artifact.format_version,
        arch=artifact.arch, arch_kwargs=artifact.arch_kwargs, dataset=artifact.dataset,
        num_classes=artifact.num_classes, input_size=artifact.input_size, mean=artifact.mean,
        std=artifact.std,
        metrics=MetricsRecord(
            top1=m.top1, top5=m.top5, fp32_bytes=m.fp32_bytes, size_parts=m.size_parts, params=m.params,
            estimated_bits=m.estimated_bits,
            coded_latent_bytes=m.coded_latent_bytes, conv_slice_sparsity=m.conv_slice_sparsity,
            weight_sparsity=m.weight_sparsity, macs_dense=m.macs_dense, macs_sparse=m.macs_sparse,
        ),
        recipe=artifact.run.recipe if artifact.run else {},
        versions=artifact.run.versions if artifact.run else {},
        layers=[LayerRecord(**{f: getattr(layer, f) for f in LayerRecord.__dataclass_fields__})
                for layer in artifact.layers],
        header=artifact.header,
    )


def set_measurement(session: Session, sha256: str, measured: Measurement) -> None:
    """Record what this installation measured for artifact ``sha256`` (replacing an older measurement)."""
    artifact = get_artifact(session, sha256)
    if artifact is None:
        raise EntryNotFoundError(f"no catalogued artifact {sha256[:12]}: add it first (`lilnetx zoo add`)")
    m = artifact.metrics
    m.measured_top1, m.measured_top5 = measured.top1, measured.top5
    m.measured_dataset, m.measured_images, m.measured_at = measured.dataset, measured.images, measured.measured_at


def measurement(artifact: Artifact) -> Measurement | None:
    """What this installation measured for ``artifact``, or ``None`` when it only has the header's claim."""
    m = artifact.metrics
    return measurement_of(m.measured_top1, m.measured_top5, m.measured_dataset, m.measured_images, m.measured_at)


def measurement_of(top1: float | None, top5: float | None, dataset: str | None, images: int | None,
                   at: datetime | None) -> Measurement | None:
    """The :class:`Measurement` stored in a metrics row's ``measured_*`` columns, ``None`` when incomplete."""
    if top1 is None or dataset is None or images is None or at is None:
        return None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite drops the zone
    return Measurement(top1=top1, top5=top5, dataset=dataset, images=images, measured_at=at)


def entry_table(session: Session, pattern: str = "*", *, dataset: str | None = None,
                max_bytes: int | None = None, min_accuracy: float | None = None,
                min_slice_sparsity: float | None = None) -> list[dict[str, Any]]:
    """The listing columns of the entries :func:`find_entries` finds (name, arch, dataset, sizes, claimed and
    measured accuracy, sparsity, MACs, sha256, dates) as plain dicts, by name, in ONE joined query (views of
    thousands of entries); ``zoo.model_card.list_row`` turns one into a listing row."""
    columns = [ZooEntry.name, ZooEntry.dataset, ZooEntry.added_at, Architecture.name.label("arch"),
               Artifact.sha256, Artifact.size_bytes, Artifact.verified, Metrics.top1, Metrics.top5,
               Metrics.measured_top1, Metrics.measured_top5, Metrics.measured_dataset, Metrics.measured_images,
               Metrics.measured_at, Metrics.fp32_bytes, Metrics.params, Metrics.conv_slice_sparsity,
               Metrics.weight_sparsity, Metrics.macs_dense, Metrics.macs_sparse]
    query = _filtered(select(*columns).join(ZooEntry.architecture), dataset, max_bytes, min_accuracy,
                      min_slice_sparsity)
    rows = [row._asdict() for row in session.execute(query)]
    return [row for row in rows if fnmatch.fnmatchcase(row["name"], pattern)] if pattern != "*" else rows


def catalog_fingerprint(session: Session) -> tuple[str, ...]:
    """A cheap key that changes when entries are added, removed or re-pointed, or an artifact is measured."""
    query = (select(func.count(ZooEntry.id), func.max(ZooEntry.added_at), func.sum(ZooEntry.artifact_id),
                    func.max(ZooEntry.id), func.max(Metrics.measured_at))
             .select_from(ZooEntry).outerjoin(Metrics, Metrics.artifact_id == ZooEntry.artifact_id))
    return tuple(str(v) for v in session.execute(query).one())


def get_state(session: Session, key: str) -> str | None:
    row = session.get(CatalogState, key)
    return row.value if row else None


def set_state(session: Session, key: str, value: str) -> None:
    session.merge(CatalogState(key=key, value=value))
