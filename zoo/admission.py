"""Admitting an artifact into the zoo: describe it, measure it, compare it with what was claimed.

Every way a file enters the catalog (``zoo add``, seeding, reindexing, the dashboard's upload, the pull of a
remote entry, ``zoo verify``) goes through :func:`admit`, which returns what it found as a value: the
record computed from the file, the accuracy measured on this installation (``None`` when it could not be)
and the problems, that is every way the file is not what was claimed about it. The caller decides what a
problem means: a remote entry with one is refused, a local file is added with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from zoo.catalog.records import ArtifactRecord, Measurement, disagreements
from zoo.errors import MeasurementRefused, MeasurementUnavailable
from zoo.measure import check_claim

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admission:
    """What admitting one file found."""

    record: ArtifactRecord  # computed from the file itself
    measured: Measurement | None  # None: measuring is off, or the dataset is not at hand (warned)
    problems: tuple[str, ...]  # "field: claimed X, the artifact says Y"; the measured top-1 below the claim


def admit(name: str, path: Path, *, claimed: ArtifactRecord | None = None, data_root: Path | None = None,
          timeout_s: float, must_measure: bool = False) -> Admission:
    """Describe the artifact at ``path`` (entry ``name``), measure its accuracy and compare it with ``claimed``.

    ``claimed`` is what a remote index says about the file (``None``: only the file's own header claims,
    its top-1). A file that disagrees with ``claimed`` is not measured. Raises ``lilnetx.ArtifactError``
    (a ``ValueError``) when the file is not a valid artifact, and :class:`MeasurementUnavailable` when it
    cannot be measured and ``must_measure``.
    """
    from zoo.ingest import describe  # imports torch and lilnetx: only when admitting
    from zoo.measure import measure

    described = describe(path)
    record = described.record
    problems = disagreements(claimed, record) if claimed is not None else []
    measured = None
    if not problems:
        try:
            measured = measure(described.model, described.header, data_root=data_root, timeout_s=timeout_s)
        except MeasurementUnavailable as exc:
            if must_measure:
                raise
            if isinstance(exc, MeasurementRefused):  # its dataset is here: the claim could be checked, and fails
                problems.append(f"accuracy: cannot be measured on its dataset, which is at hand ({exc})")
            elif timeout_s > 0:
                log.warning("lilnetx: %s keeps only the accuracy its header claims: %s", name, exc)
    top1 = (claimed or record).metrics.top1
    if measured is not None and (why := check_claim(name, top1, measured)):
        problems.append(why)
    return Admission(record, measured, tuple(problems))
