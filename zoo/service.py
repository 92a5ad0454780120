"""The zoo as one object: a catalog engine, an artifact store and, optionally, a remote static zoo.

``Zoo.from_env()`` reads ``LILNETX_DB``, ``LILNETX_HOME``, ``LILNETX_ZOO_URL``, ``LILNETX_OFFLINE``,
``LILNETX_DATA_ROOT`` and ``LILNETX_MEASURE_TIMEOUT`` and does nothing else: no seeding (``zoo.seed``), no
network, no write. The remote zoo's index is read on the first read that needs it (once per process); its
new entries are catalogued only when there are any and the catalog is writable (a read-only catalog lists
what it holds, with a warning). The functions of ``zoo.api`` and the ``lilnetx zoo`` commands are thin
wrappers around its methods.

Accuracy: the catalog keeps what an artifact's header CLAIMS and what this installation MEASURED
(``zoo.measure``): ``add`` and the first pull of a remote entry measure when the dataset is available
offline, within ``measure_timeout_s``; ``verify`` measures on demand.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from zoo.catalog import queries
from zoo.catalog.engine import get_engine, run_write, session_scope
from zoo.catalog.models import ZooEntry
from zoo.catalog.records import ArtifactRecord, Measurement, disagreements, macs_saved
from zoo.errors import (
    CatalogError,
    ChecksumError,
    EntryNotFoundError,
    InvalidFilterError,
    InvalidNameError,
    MeasurementUnavailable,
    OfflineError,
    RemoteZooError,
    UnverifiedArtifactError,
)
from zoo.measure import DEFAULT_TIMEOUT_S, check_claim, data_root_from_env, timeout_from_env
from zoo.model_card import accuracy_fields, model_card
from zoo.names import check_tag_dataset, make_name, split_name, to_filename
from zoo.store import Store, copy_file_atomic

if TYPE_CHECKING:
    from zoo.ingest import Described
    from zoo.remote import IndexEntry

log = logging.getLogger(__name__)
_synced: set[tuple[str, str]] = set()  # (catalog URL, zoo URL) pairs already synced by this process


def _offline_from_env() -> bool:
    return os.environ.get("LILNETX_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _check_fraction(value: float | None, what: str) -> None:
    if value is not None and not 0 <= value <= 1:
        raise InvalidFilterError(f"{what}={value} is out of range: give a fraction in [0, 1], e.g. 0.98 for 98 %")


def _rejection_fix(where: str) -> str:
    return (f"it was rejected and nothing was stored. The index of {where} is wrong or was tampered with: ask "
            "its publisher to republish it (`lilnetx zoo publish`), or unset LILNETX_ZOO_URL")


def _check_claims(name: str, claimed: ArtifactRecord, uri: str, path: Path) -> Described:
    """Describe the artifact at ``path``; :class:`UnverifiedArtifactError` unless it is what ``claimed`` says."""
    from zoo import remote  # fsspec and aiohttp: imported only when a remote zoo is used
    from zoo.ingest import describe  # imports torch and lilnetx: only when checking

    where = f"the zoo at {remote.zoo_url(uri, claimed.sha256)}"
    try:
        described = describe(path)
    except ValueError as exc:  # lilnetx.ArtifactError: not a valid artifact, or its plugin is not installed
        raise UnverifiedArtifactError(f"cannot check {name} (sha256 {claimed.sha256[:12]}) from {where}: "
                                      f"{exc}; {_rejection_fix(where)}") from None
    if found := disagreements(claimed, described.record):
        raise UnverifiedArtifactError(f"{name}: the index of {where} does not describe its artifact "
                                      f"(sha256 {claimed.sha256[:12]}): {'; '.join(found)}; "
                                      f"{_rejection_fix(where)}")
    return described


@dataclass
class ReindexReport:
    """What ``Zoo.reindex`` changed."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class Zoo:
    """Catalog + store (+ remote zoo). Build one with :meth:`from_env` or explicitly in tests.

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
        """The zoo the environment describes; builds the object and nothing else (see the module doc)."""
        return cls(get_engine(), Store(), os.environ.get("LILNETX_ZOO_URL") or None, _offline_from_env(),
                   data_root=data_root_from_env(), measure_timeout_s=timeout_from_env())

    # -- reading -----------------------------------------------------------------------------------------

    def list(self, pattern: str = "*", *, dataset: str | None = None, max_bytes: int | None = None,
             min_accuracy: float | None = None,
             min_slice_sparsity: float | None = None) -> list[dict[str, Any]]:
        """Summaries (name, dataset, bytes, accuracy, sparsity, ...) of the matching entries, by name.

        ``min_accuracy`` applies to the accuracy shown: measured when it was, else the header's claim;
        ``min_slice_sparsity`` to the conv slice sparsity (entries without K×K convolutions never pass it).
        """
        _check_fraction(min_accuracy, "min_accuracy")
        _check_fraction(min_slice_sparsity, "min_slice_sparsity")
        self._sync_once()
        with session_scope(self.engine) as session:
            entries = queries.find_entries(session, pattern, dataset=dataset, max_bytes=max_bytes,
                                           min_accuracy=min_accuracy, min_slice_sparsity=min_slice_sparsity)
            return [self._summary(e) for e in entries]

    def _summary(self, entry: ZooEntry) -> dict[str, Any]:
        """``verified`` is False for an entry copied from a remote index that no pull has checked yet.

        ``accuracy`` / ``claimed_accuracy`` / ``measured_on`` as on a model card; ``top1`` / ``top5`` repeat
        ``accuracy`` (the figure shown).
        """
        a, m = entry.artifact, entry.artifact.metrics
        accuracy = accuracy_fields(m.top1, m.top5, queries.measurement(a))
        return {"name": entry.name, "dataset": entry.dataset, "bytes": a.size_bytes,
                "top1": accuracy["accuracy"]["top1"], "top5": accuracy["accuracy"]["top5"], **accuracy,
                "compression_ratio": m.fp32_bytes / a.size_bytes, "params": m.params,
                "conv_slice_sparsity": m.conv_slice_sparsity, "weight_sparsity": m.weight_sparsity,
                "macs_sparse": m.macs_sparse, "macs_saved": macs_saved(m.macs_dense, m.macs_sparse),
                "sha256": a.sha256,
                "cached": self.store.object_path(a.sha256).is_file(), "verified": a.verified}

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
            self._sync_once()

    def _lookup(self, name: str) -> tuple[ArtifactRecord, str, bool]:
        """The catalogued record, uri and verified flag of ``name`` (syncing the remote zoo first if needed)."""
        self._sync_if_missing(name)
        with session_scope(self.engine) as session:
            artifact = self._require(session, name).artifact
            return queries.artifact_record(artifact), artifact.uri, artifact.verified

    # -- measuring ---------------------------------------------------------------------------------------

    def _measure(self, name: str, described: Described, timeout_s: float | None = None) -> Measurement | None:
        """Measure ``described``'s accuracy; ``None`` (with a warning, unless measuring is off) if it cannot be."""
        from zoo.measure import measure  # imports torch: only when measuring

        try:
            return measure(described.model, described.header, data_root=self.data_root,
                           timeout_s=self.measure_timeout_s if timeout_s is None else timeout_s)
        except MeasurementUnavailable as exc:
            if (self.measure_timeout_s if timeout_s is None else timeout_s) > 0:
                log.warning("lilnetx: %s keeps only the accuracy its header claims: %s", name, exc)
            return None

    def verify(self, name: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Pull entry ``name``, measure its accuracy now, record it and return the card's accuracy fields.

        ``timeout_s`` defaults to ``measure_timeout_s`` (or :data:`~zoo.measure.DEFAULT_TIMEOUT_S` when that
        is 0). The result also holds ``claim_error``: why the header's top-1 is not believable (more than 0.5
        points above the measured one), or ``None``. Raises :class:`MeasurementUnavailable` when the accuracy
        cannot be measured here.
        """
        from zoo.ingest import describe
        from zoo.measure import measure

        path, checked = self._pull(name)
        record, measured = checked or (None, None)
        if measured is None:  # the pull's own check of a remote entry did not measure it just now
            described = describe(path)
            record = described.record
            limit = timeout_s if timeout_s is not None else self.measure_timeout_s or DEFAULT_TIMEOUT_S
            measured = measure(described.model, described.header, data_root=self.data_root, timeout_s=limit)
        run_write(self.engine, lambda session: queries.set_measurement(session, record.sha256, measured))
        card = self.card(name)
        return {"name": name, "accuracy": card["accuracy"], "claimed_accuracy": card["claimed_accuracy"],
                "measured_on": card["measured_on"], "claim_error": check_claim(name, record.metrics.top1, measured)}

    # -- pulling -----------------------------------------------------------------------------------------

    def pull(self, name: str, dest: str | Path | None = None) -> Path:
        """The verified artifact of ``name``: from the store, else fetched from the remote zoo.

        The file is hashed once (while downloading, or when the store re-checks its copy). An entry copied
        from a remote zoo's index is first checked against the artifact itself (decoded, described and, when
        its dataset is available offline, measured): a file that is not what the index claims, or whose
        measured top-1 is more than 0.5 points below the claimed one, raises :class:`UnverifiedArtifactError`
        and is not stored. ``dest`` (a folder, or a path ending in ``.lnx``) receives a copy; otherwise the
        store's read-only file is returned.
        """
        return self._pull(name, dest)[0]

    def _pull(self, name: str, dest: str | Path | None = None
              ) -> tuple[Path, tuple[ArtifactRecord, Measurement | None] | None]:
        """:meth:`pull`, and what its check of a remote entry found (the described record and the measured
        accuracy, ``None`` where it measured none), or ``None`` where it checked nothing."""
        claimed, uri, verified = self._lookup(name)
        sha = claimed.sha256
        checked: list[tuple[ArtifactRecord, Measurement | None]] = []

        def check(path: Path) -> None:
            described = _check_claims(name, claimed, uri, path)
            measured = self._measure(name, described)
            if measured is not None and (why := check_claim(name, claimed.metrics.top1, measured)):
                from zoo.remote import zoo_url

                where = f"the zoo at {zoo_url(uri, sha)}"
                raise UnverifiedArtifactError(f"{name}: the index of {where} does not describe its artifact "
                                              f"(sha256 {sha[:12]}): {why}; {_rejection_fix(where)}")
            checked.append((described.record, measured))

        path = self.store.get(sha) or self._fetch(name, sha, claimed.size_bytes, uri,
                                                  None if verified else check)
        if not verified:
            if not checked:  # the store already held the bytes (fetched for another catalog, or concurrently)
                check(path)
            self._record_checked(name, uri, *checked[0])
        if self.store.ref(name) != sha:
            self.store.set_ref(name, sha)
        found = checked[0] if checked else None
        if dest is None:
            return path, found
        dest = Path(dest)
        target = dest if dest.suffix == ".lnx" else dest / f"{to_filename(name)}.lnx"
        copy_file_atomic(path, target)
        return target, found

    def _record_checked(self, name: str, uri: str, record: ArtifactRecord, measured: Measurement | None) -> None:
        """Mark a pulled remote artifact verified (and measured); a read-only catalog keeps it unverified."""

        def work(session: Session) -> None:
            queries.upsert_artifact(session, record, uri, verified=True)
            if measured is not None:
                queries.set_measurement(session, record.sha256, measured)

        try:
            run_write(self.engine, work)
        except CatalogError as exc:
            log.warning("lilnetx: %s was checked, but the catalog cannot record it (%s)", name, exc)

    def _fetch(self, name: str, sha: str, size: int, uri: str, check: Callable[[Path], None] | None) -> Path:
        from zoo import remote

        if self.offline:
            raise OfflineError(f"{name} (sha256 {sha[:12]}) is not in the local cache {self.store.root} and "
                               "LILNETX_OFFLINE=1 forbids downloading it; unset LILNETX_OFFLINE to fetch it")
        urls = [] if uri.startswith(queries.STORE_URI) else [uri]
        if self.remote_url and remote.artifact_url(self.remote_url, sha) not in urls:
            urls.append(remote.artifact_url(self.remote_url, sha))
        if not urls:
            raise EntryNotFoundError(
                f"the artifact of {name} (sha256 {sha[:12]}) is missing from the store {self.store.root} and "
                f"no remote zoo is known; set LILNETX_ZOO_URL to a zoo that has it, or re-add it with "
                f"`lilnetx zoo add FILE.lnx --tag {split_name(name)[1]}`"
            )
        failures: list[RemoteZooError | ChecksumError] = []
        for url in urls:
            try:
                return remote.fetch_artifact(url, sha, size, self.store, check=check)
            except (RemoteZooError, ChecksumError) as exc:
                failures.append(exc)
        raise type(failures[-1])("; ".join(str(f) for f in failures))

    # -- writing -----------------------------------------------------------------------------------------

    def add(self, path: str | Path, tag: str, *, replace: bool = False) -> str:
        """Verify the artifact at ``path``, measure it, store it and catalogue it as ``ARCH.TAG``; return the name.

        The file is parsed once; its accuracy is measured when its dataset is available offline (else the
        entry keeps the header's claim, with a warning). Nothing is added when verification fails.
        """
        from zoo.ingest import describe  # imports torch and lilnetx: only when adding

        path = Path(path)
        described = describe(path)
        record = described.record
        name = make_name(record.arch, tag)
        dataset = check_tag_dataset(tag, record.dataset)
        measured = self._measure(name, described)
        if measured is not None and (why := check_claim(name, record.metrics.top1, measured)):
            log.warning("lilnetx: %s: %s; the zoo shows the measured figure", name, why)
        self.store.put_file(path, sha256=record.sha256)
        self.catalogue(name, dataset, record, f"{queries.STORE_URI}{record.sha256}", replace=replace,
                       measured=measured)
        return name

    def catalogue(self, name: str, dataset: str, record: ArtifactRecord, uri: str, *,
                  replace: bool = False, measured: Measurement | None = None) -> None:
        """Catalogue an already described artifact as ``name`` and point the store's ref at it."""

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
        from zoo.ingest import describe

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
                described = describe(path)
                record = described.record
                arch, tag = split_name(name)
                if arch != record.arch:
                    raise InvalidNameError(f"the artifact holds architecture {record.arch!r}, not {arch!r}")
                dataset = check_tag_dataset(tag, record.dataset)
            except ValueError as exc:  # an artifact this installation cannot decode, or a name that lies
                report.skipped.append(name)
                log.warning("cannot reindex %s: %s", name, exc)
                continue
            self.catalogue(name, dataset, record, f"{queries.STORE_URI}{sha}", replace=True,
                           measured=self._measure(name, described))
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

    def _sync_once(self) -> None:
        """Sync the remote zoo on the first read that needs it (once per process and catalog)."""
        if not self.remote_url or self.offline or self.remote_error is not None:
            return
        key = (str(self.engine.url), self.remote_url)
        if key in _synced:
            return
        try:
            self.sync_remote()
        except RemoteZooError as exc:
            self.remote_error = exc
            log.warning("lilnetx: using the local catalog only: %s", exc)
            return
        except CatalogError as exc:  # e.g. a read-only catalog file
            log.warning("lilnetx: the remote zoo's new entries are not listed: the catalog cannot record them "
                        "(%s)", exc)
        _synced.add(key)

    def sync_remote(self) -> int:
        """Catalogue the remote zoo's entries that the local catalog lacks; return how many were added.

        Local entries shadow remote ones of the same name; artifacts are only downloaded (and the index's
        description of them checked) when pulled. Reads the catalog first and writes only when the index
        holds something new.
        """
        if not self.remote_url:
            raise RemoteZooError("no remote zoo: set LILNETX_ZOO_URL (file://, http(s)://, s3://...)")
        from zoo import remote

        base = self.remote_url
        entries = remote.fetch_index(base)
        with session_scope(self.engine) as session:
            todo = [item for item in entries if self._is_new(session, item, warn=True)]
        if not todo:
            return 0

        def work(session: Session) -> int:
            added = 0
            for item in todo:
                if not self._is_new(session, item, warn=False):  # changed since the read above
                    continue
                added += queries.get_entry(session, item.name) is None
                queries.add_entry(session, item.name, item.dataset, item.artifact,
                                  remote.artifact_url(base, item.artifact.sha256), verified=False)
            return added

        return run_write(self.engine, work)

    @staticmethod
    def _is_new(session: Session, item: IndexEntry, *, warn: bool) -> bool:
        """Whether catalogging remote entry ``item`` would change the catalog (and is allowed to)."""
        if queries.get_entry(session, item.name) is not None:  # a local entry of that name wins (or is it)
            return False
        known = queries.get_artifact(session, item.artifact.sha256)
        if known is not None and known.verified and (
                found := disagreements(item.artifact, queries.artifact_record(known))):
            if warn:
                log.warning("skipping remote entry %s: the index does not describe its artifact: %s",
                            item.name, "; ".join(found))
            return False
        return True

    def publish(self, dest: str) -> tuple[str, int]:
        """Write every catalogued entry as a static zoo at ``dest`` (fetching missing artifacts first)."""
        from zoo import remote

        with session_scope(self.engine) as session:
            items = [remote.IndexEntry(e.name, e.dataset, queries.artifact_record(e.artifact))
                     for e in queries.find_entries(session)]
        if not items:
            raise EntryNotFoundError("the catalog is empty: `lilnetx zoo add` models before publishing")
        pairs = [(item, self.pull(item.name)) for item in items]
        return remote.publish(pairs, dest), len(pairs)

