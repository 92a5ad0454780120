"""The catalog schema (SQLAlchemy 2.0 typed ORM). Every figure is computed from an artifact, never typed in.

``Architecture`` 1─n ``ZooEntry`` n─1 ``Artifact`` (one artifact may be published under several tags);
an artifact has one ``Metrics`` row, one ``TrainingRun`` (its recipe), many ``LayerStat`` rows and many
``BenchmarkResult`` rows. Change this file only together with a new Alembic revision in ``migrations/``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, String, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Architecture(Base):
    """A model architecture known to the zoo (the ``arch`` of ``arch.tag``)."""

    __tablename__ = "architectures"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    entries: Mapped[list[ZooEntry]] = relationship(back_populates="architecture")


class Artifact(Base):
    """A verified ``.lnx`` file, identified by the sha256 of all its bytes."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    uri: Mapped[str] = mapped_column(String(2048))  # "store:<sha256>" or the URL of a remote zoo's copy
    format_version: Mapped[int]
    arch: Mapped[str] = mapped_column(String(64))
    arch_kwargs: Mapped[dict[str, Any]]
    dataset: Mapped[str | None] = mapped_column(String(64))
    num_classes: Mapped[int | None]
    input_size: Mapped[list[Any] | None]
    mean: Mapped[list[Any] | None]
    std: Mapped[list[Any] | None]
    header: Mapped[dict[str, Any]]  # the artifact's verified header, as read from the file
    # True when this installation computed the row from the bytes (add, reindex, a checked pull); False for a
    # row copied from a remote zoo's index, until a pull has described the fetched file and found it agrees
    verified: Mapped[bool] = mapped_column(server_default=false())
    added_at: Mapped[datetime] = mapped_column(default=_now)

    entries: Mapped[list[ZooEntry]] = relationship(back_populates="artifact")
    metrics: Mapped[Metrics] = relationship(back_populates="artifact", cascade="all, delete-orphan")
    layers: Mapped[list[LayerStat]] = relationship(
        back_populates="artifact", cascade="all, delete-orphan", order_by="LayerStat.position")
    run: Mapped[TrainingRun | None] = relationship(back_populates="artifact", cascade="all, delete-orphan")
    benchmarks: Mapped[list[BenchmarkResult]] = relationship(
        back_populates="artifact", cascade="all, delete-orphan")


class ZooEntry(Base):
    """A named model of the zoo: ``arch.tag`` where the tag starts with the dataset."""

    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(129), unique=True)
    tag: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    architecture_id: Mapped[int] = mapped_column(ForeignKey("architectures.id"))
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"), index=True)
    added_at: Mapped[datetime] = mapped_column(default=_now)

    architecture: Mapped[Architecture] = relationship(back_populates="entries")
    artifact: Mapped[Artifact] = relationship(back_populates="entries")


class Metrics(Base):
    """Accuracy, size, sparsity and MACs of an artifact's decoded model.

    ``top1`` / ``top5`` are what the artifact's header CLAIMS; ``measured_*`` are what this installation
    measured by running the decoded model over ``measured_images`` test images of ``measured_dataset``
    (all ``None`` until measured: ``zoo add``, the first pull of a remote entry, ``lilnetx zoo verify``).
    """

    __tablename__ = "metrics"

    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), primary_key=True)
    top1: Mapped[float | None]  # claimed (header)
    top5: Mapped[float | None]  # claimed (header)
    measured_top1: Mapped[float | None]
    measured_top5: Mapped[float | None]
    measured_dataset: Mapped[str | None] = mapped_column(String(64))
    measured_images: Mapped[int | None]
    measured_at: Mapped[datetime | None]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # an fp32 checkpoint of the decoded model: 4 bytes per floating-point value of its state_dict
    fp32_bytes: Mapped[int] = mapped_column(BigInteger)
    size_parts: Mapped[dict[str, Any]]  # bytes of each part of the file (coded latents, tables, header...)
    params: Mapped[int] = mapped_column(BigInteger)
    estimated_bits: Mapped[float | None]
    coded_latent_bytes: Mapped[int | None] = mapped_column(BigInteger)
    conv_slice_sparsity: Mapped[float | None]  # zero K×K slices of the K×K > 1 convs; NULL without any
    weight_sparsity: Mapped[float]  # zero weights of the compressed layers
    macs_dense: Mapped[int | None] = mapped_column(BigInteger)
    macs_sparse: Mapped[int | None] = mapped_column(BigInteger)

    artifact: Mapped[Artifact] = relationship(back_populates="metrics")


class LayerStat(Base):
    """One conv / linear layer of an artifact: shape, coded and estimated bits, sparsity, MACs."""

    __tablename__ = "layer_stats"
    __table_args__ = (UniqueConstraint("artifact_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"))
    position: Mapped[int]
    name: Mapped[str] = mapped_column(String(512))
    latent_group: Mapped[str | None] = mapped_column(String(64))
    shape: Mapped[list[Any]]
    params: Mapped[int] = mapped_column(BigInteger)
    coded_bits: Mapped[int | None] = mapped_column(BigInteger)
    estimated_bits: Mapped[float | None]
    conv_slice_sparsity: Mapped[float | None]  # NULL for a linear layer or a 1×1 conv
    weight_sparsity: Mapped[float]
    macs_dense: Mapped[int | None] = mapped_column(BigInteger)
    macs_sparse: Mapped[int | None] = mapped_column(BigInteger)

    artifact: Mapped[Artifact] = relationship(back_populates="layers")


class TrainingRun(Base):
    """How an artifact was trained: the recipe and package versions its header records."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), unique=True)
    recipe: Mapped[dict[str, Any]]
    versions: Mapped[dict[str, Any]]

    artifact: Mapped[Artifact] = relationship(back_populates="run")


class BenchmarkResult(Base):
    """One latency measurement of an artifact's model on one machine.

    ``variant`` is how the model ran ("dense", "slim", "sparse", "onnxruntime"); ``machine_info`` holds the
    CPU model, ISA flags and library versions of the machine (``None`` for rows from before revision 0003).
    """

    __tablename__ = "benchmarks"

    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), index=True)
    machine: Mapped[str] = mapped_column(String(256))
    device: Mapped[str] = mapped_column(String(64))
    threads: Mapped[int]
    batch: Mapped[int]
    slim: Mapped[bool]
    variant: Mapped[str] = mapped_column(String(32), server_default="dense")
    machine_info: Mapped[dict[str, Any] | None]
    latencies_ms: Mapped[list[Any]]
    mean_ms: Mapped[float]
    p50_ms: Mapped[float]
    p90_ms: Mapped[float]
    measured_at: Mapped[datetime] = mapped_column(default=_now)

    artifact: Mapped[Artifact] = relationship(back_populates="benchmarks")


class CatalogState(Base):
    """Small key/value facts about the catalog itself (e.g. the fingerprint of the seeded artifacts)."""

    __tablename__ = "catalog_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(1024))
