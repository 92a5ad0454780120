"""The zoo's local catalog as one object: a catalog engine, an artifact store and, optionally, a remote mirror.

``Zoo.from_env()`` reads ``LILNETX_DB``, ``LILNETX_HOME``, ``LILNETX_ZOO_URL``, ``LILNETX_OFFLINE``,
``LILNETX_DATA_ROOT`` and ``LILNETX_MEASURE_TIMEOUT`` and builds the object: the catalog's engine (which
creates and migrates the catalog file on first use), no seeding (``zoo.seed``), no network. The remote
zoo (``zoo.mirror``) is read on the first read that needs it. The functions of ``zoo.api`` and the
``lilnetx zoo`` commands are thin wrappers around its methods.

Every file enters through one admission step (:meth:`Zoo.admit`, ``zoo.admission``): described from its
bytes, measured when its dataset is available offline (within ``measure_timeout_s``), compared with what
was claimed. The catalog keeps what an artifact's header CLAIMS and what this installation MEASURED.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from zoo import mirror
from zoo.admission import Admission, admit
from zoo.catalog import queries
from zoo.catalog.engine import get_engine, run_write, session_scope
from zoo.catalog.models import ZooEntry
from zoo.catalog.records import ArtifactRecord, Measurement
from zoo.errors import EntryNotFoundError, InvalidFilterError, InvalidNameError, RemoteZooError
from zoo.measure import DEFAULT_TIMEOUT_S, data_root_from_env, timeout_from_env
from zoo.model_card import list_row, model_card
from zoo.names import check_tag_dataset, make_name, split_name, to_filename
from zoo.store import Store, copy_file_atomic

log = logging.getLogger(__name__)


def _offline_from_env() -> bool:
    return os.environ.get("LILNETX_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _check_fraction(value: float | None, what: str) -> None:
    if value is not None and not 0 <= value <= 1:
        raise InvalidFilterError(f"{what}={value} is out of range: give a fraction in [0, 1], e.g. 0.98 for 98 %")


@dataclass
class ReindexReport:
    """What ``Zoo.reindex`` changed."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class Zoo:
    """Catalog + store (+ remote mirror). Build one with :meth:`from_env` or explicitly in tests.

    ``data_root`` is where datasets read from files are found for measuring (see ``zoo.measure``);
    ``measure_timeout_s`` bounds each measurement (0: never measure on add / pull).
    """

    engine: Engine
    store: Store
    remote_url: str | None = None
    offline: bool = False
    remote_error: RemoteZooError | None = None
    data_root: Path | None = None
    measure_timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(cls) -> Zoo:
        """The zoo the environment describes (see the module doc)."""
        return cls(get_engine(), Store(), os.environ.get("LILNETX_ZOO_URL") or None, _offline_from_env(),
                   data_root=data_root_from_env(), measure_timeout_s=timeout_from_env())

    # -- reading -----------------------------------------------------------------------------------------

    def list(self, pattern: str = "*", *, dataset: str | None = None, max_bytes: int | None = None,
             min_accuracy: float | None = None,
             min_slice_sparsity: float | None = None) -> list[dict[str, Any]]:
        """Rows (name, arch, dataset, bytes, accuracy, sparsity, MACs, ...) of the matching entries, by name.

        ``min_accuracy`` applies to the accuracy shown: measured when it was, else the header's claim;
        ``min_slice_sparsity`` to the conv slice sparsity (entries without K×K convolutions never pass it).
        Each row is ``zoo.model_card.list_row``, plus ``cached``: whether the store holds the file.
        """
        _check_fraction(min_accuracy, "min_accuracy")
        _check_fraction(min_slice_sparsity, "min_slice_sparsity")
        mirror.sync_once(self)
        with session_scope(self.engine) as session:
            rows = queries.entry_table(session, pattern, dataset=dataset, max_bytes=max_bytes,
                                       min_accuracy=min_accuracy, min_slice_sparsity=min_slice_sparsity)
        return [{**list_row(row), "cached": self.store.object_path(row["sha256"]).is_file()} for row in rows]

    def card(self, name: str) -> dict[str, Any]:
        """The model card of entry ``name`` (see ``zoo.model_card``)."""
        self._sync_if_missing(name)
        with session_scope(self.engine) as session:
            entry = self._require(session, name)
            return model_card(entry.name, entry.dataset, queries.artifact_record(entry.artifact),
                              queries.measurement(entry.artifact))

    def _require(self, session: Session, name: str) -> ZooEntry:
        try:
            return queries.require_entry(session, name)
        except EntryNotFoundError as exc:
            if self.remote_error is not None:
                raise EntryNotFoundError(f"{exc} (the remote zoo could not be read: {self.remote_error})") \
                    from None
            if self.offline and self.remote_url:
                raise EntryNotFoundError(f"{exc} (LILNETX_OFFLINE=1: the remote zoo {self.remote_url} was "
                                         "not consulted)") from None
            raise

    def _sync_if_missing(self, name: str) -> None:
        """Read the remote zoo's index (once) when the catalog has no entry ``name``."""
        split_name(name)
        if self.remote_url and not self.offline:
            with session_scope(self.engine) as session:
                if queries.get_entry(session, name) is not None:
                    return
            mirror.sync_once(self)

    def _lookup(self, name: str) -> tuple[ArtifactRecord, str, bool]:
        """The catalogued record, uri and verified flag of ``name`` (syncing the remote zoo first if needed)."""
        self._sync_if_missing(name)
        with session_scope(self.engine) as session:
            artifact = self._require(session, name).artifact
            return queries.artifact_record(artifact), artifact.uri, artifact.verified

    # -- admitting ---------------------------------------------------------------------------------------

    def admit(self, name: str, path: Path, *, claimed: ArtifactRecord | None = None,
              timeout_s: float | None = None, must_measure: bool = False) -> Admission:
        """:func:`zoo.admission.admit` with this zoo's data root and time limit (``timeout_s`` overrides it)."""
        return admit(name, path, claimed=claimed, data_root=self.data_root, must_measure=must_measure,
                     timeout_s=self.measure_timeout_s if timeout_s is None else timeout_s)

    def verify(self, name: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Pull entry ``name``, measure its accuracy now, record it and return the card's accuracy fields.

        ``timeout_s`` defaults to ``measure_timeout_s`` (or :data:`~zoo.measure.DEFAULT_TIMEOUT_S` when that
        is 0). The result also holds ``claim_error``: why the header's top-1 is not believable (more than 0.5
        points below the measured one), or ``None``. Raises :class:`MeasurementUnavailable` when the accuracy
        cannot be measured here.
        """
        path, admission = self._pull(name)
        if admission is None or admission.measured is None:  # the pull did not measure it just now
            limit = timeout_s if timeout_s is not None else self.measure_timeout_s or DEFAULT_TIMEOUT_S
            admission = self.admit(name, path, timeout_s=limit, must_measure=True)
        measured: Measurement = admission.measured
        run_write(self.engine, lambda session: queries.set_measurement(session, admission.record.sha256, measured))
        card = self.card(name)
        problems = [p for p in admission.problems if p.startswith("metrics.top1")]
        return {"name": name, "accuracy": card["accuracy"], "claimed_accuracy": card["claimed_accuracy"],
                "measured_on": card["measured_on"], "claim_error": problems[0] if problems else None}

    # -- pulling -----------------------------------------------------------------------------------------

    def pull(self, name: str, dest: str | Path | None = None) -> Path:
        """The verified artifact of ``name``: from the store, else fetched from the remote zoo.

        The file is hashed once (while downloading, or when the store re-checks its copy). An entry copied
        from a remote zoo's index is first admitted (decoded, described and, when its dataset is available
        offline, measured): a file that is not what the index claims, or whose measured top-1 is more than
        0.5 points below the claimed one, raises :class:`UnverifiedArtifactError` and is not stored. ``dest``
        (a folder, or a path ending in ``.lnx``) receives a copy; otherwise the store's read-only file is
        returned.
        """
        path = self._pull(name)[0]
        if dest is None:
            return path
        dest = Path(dest)
        target = dest if dest.suffix == ".lnx" else dest / f"{to_filename(name)}.lnx"
        copy_file_atomic(path, target)
        return target

    def _pull(self, name: str) -> tuple[Path, Admission | None]:
        """The stored file of ``name`` and, for a remote entry admitted just now, its admission."""
        claimed, uri, verified = self._lookup(name)
        sha = claimed.sha256
        admission = None
        path = self.store.get(sha)
        if path is None:
            path, admission = mirror.fetch(self, name, claimed, uri, admit=not verified)
        elif not verified:  # the store already held the bytes (fetched for another catalog, or concurrently)
            admission = mirror.admit_remote(self, name, claimed, uri, path)
        if admission is not None and not verified:
            mirror.record_admitted(self, name, uri, admission)
        if self.store.ref(name) != sha:
            self.store.set_ref(name, sha)
        return path, admission

    # -- writing -----------------------------------------------------------------------------------------

    def add(self, path: str | Path, tag: str, *, replace: bool = False) -> str:
        """Admit the artifact at ``path``, store it and catalogue it as ``ARCH.TAG``; return the name.

        Its accuracy is measured when its dataset is available offline (else the entry keeps the header's
        claim, with a warning); a header claiming more than was measured is a warning, and the zoo shows the
        measured figure. Nothing is added when the file is not a valid artifact.
        """
        path = Path(path)
        admission = self.admit(f"{path.name} (tag {tag})", path)
        record = admission.record
        name = make_name(record.arch, tag)
        dataset = check_tag_dataset(tag, record.dataset)
        for problem in admission.problems:
            log.warning("lilnetx: %s: %s; the zoo shows the measured figure", name, problem)
        self.store.put_file(path, sha256=record.sha256)
        self.catalogue(name, dataset, record, f"{queries.STORE_URI}{record.sha256}", replace=replace,
                       measured=admission.measured)
        return name

    def catalogue(self, name: str, dataset: str, record: ArtifactRecord, uri: str, *,
                  replace: bool = False, measured: Measurement | None = None) -> None:
        """Catalogue an already admitted artifact as ``name`` and point the store's ref at it."""

        def work(session: Session) -> None:
            queries.add_entry(session, name, dataset, record, uri, verified=True, replace=replace)
            if measured is not None:
                queries.set_measurement(session, record.sha256, measured)
            self.store.set_ref(name, record.sha256)  # under the write lock; the refs let reindex rebuild

        run_write(self.engine, work)

    def remove(self, name: str) -> None:
        """Remove entry ``name`` from the catalog and the store's refs (its artifact file stays cached)."""
        split_name(name)

        def work(session: Session) -> None:
            queries.remove_entry(session, name)
            self.store.remove_ref(name)

        run_write(self.engine, work)

    def reindex(self) -> ReindexReport:
        """Rebuild the catalog from the store's refs and artifacts: a lost ``registry.db`` loses nothing.

        Refs whose artifact is missing, corrupt or undecodable are skipped (and reported); entries that only
        the store could hold but whose artifact is gone are removed.
        """
        report = ReindexReport()
        refs = self.store.refs()
        with session_scope(self.engine) as session:
            known = {e.name: e.artifact.sha256 for e in session.scalars(select(ZooEntry))}
        for name, sha in refs.items():
            if known.get(name) == sha:
                continue
            path = self.store.get(sha)
            if path is None:
                report.skipped.append(name)
                log.warning("ref %s points at artifact %s, missing from the store; skipped", name, sha[:12])
                continue
            try:
                admission = self.admit(name, path)
                arch, tag = split_name(name)
                if arch != admission.record.arch:
                    raise InvalidNameError(f"the artifact holds architecture {admission.record.arch!r}, not "
                                           f"{arch!r}")
                dataset = check_tag_dataset(tag, admission.record.dataset)
            except ValueError as exc:  # an artifact this installation cannot decode, or a name that lies
                report.skipped.append(name)
                log.warning("cannot reindex %s: %s", name, exc)
                continue
            self.catalogue(name, dataset, admission.record, f"{queries.STORE_URI}{sha}", replace=True,
                           measured=admission.measured)
            report.added.append(name)

        def drop_stale(session: Session) -> None:
            for entry in session.scalars(select(ZooEntry)):
                if entry.name in refs:
                    continue
                a = entry.artifact
                if a.verified and self.store.get(a.sha256) is not None:
                    self.store.set_ref(entry.name, a.sha256)
                elif a.uri.startswith(queries.STORE_URI):
                    session.delete(entry)
                    report.removed.append(entry.name)

        run_write(self.engine, drop_stale)
        return report

    # -- the remote mirror -------------------------------------------------------------------------------

    def sync_remote(self) -> int:
        """Catalogue the remote zoo's entries that the local catalog lacks (see ``zoo.mirror.sync``)."""
        return mirror.sync(self)

    def publish(self, dest: str) -> tuple[str, int]:
        """Write every catalogued entry as a static zoo at ``dest`` (see ``zoo.mirror.publish``)."""
        return mirror.publish(self, dest)
