"""The zoo as one object: a catalog engine, an artifact store and, optionally, a remote static zoo.

``Zoo.from_env()`` reads ``LILNETX_DB``, ``LILNETX_HOME``, ``LILNETX_ZOO_URL`` and ``LILNETX_OFFLINE``;
the functions of ``zoo.api`` and the ``lilnetx zoo`` commands are thin wrappers around its methods.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from zoo import remote
from zoo.catalog import queries
from zoo.catalog.engine import get_engine, run_write, session_scope
from zoo.catalog.models import ZooEntry
from zoo.catalog.records import ArtifactRecord, disagreements
from zoo.errors import (
    ChecksumError,
    EntryNotFoundError,
    InvalidNameError,
    OfflineError,
    RemoteZooError,
    UnverifiedArtifactError,
)
from zoo.model_card import model_card
from zoo.names import check_tag_dataset, make_name, split_name, to_filename
from zoo.store import Store, copy_file_atomic

log = logging.getLogger(__name__)
_synced: set[tuple[str, str]] = set()  # (catalog URL, zoo URL) pairs already synced by this process


def _offline_from_env() -> bool:
    return os.environ.get("LILNETX_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _check_fraction(value: float | None, what: str) -> None:
    if value is not None and not 0 <= value <= 1:
        raise ValueError(f"{what}={value} is out of range: give a fraction in [0, 1], e.g. 0.98 for 98 %")


def _check_claims(name: str, claimed: ArtifactRecord, uri: str, path: Path) -> ArtifactRecord:
    """Describe the artifact at ``path``; :class:`UnverifiedArtifactError` unless it is what ``claimed`` says."""
    from zoo.ingest import describe  # imports torch and lilnetx: only when checking

    where = f"the zoo at {remote.zoo_url(uri, claimed.sha256)}"
    fix = (f"it was rejected and nothing was stored. The index of {where} is wrong or was tampered with: ask "
           "its publisher to republish it (`lilnetx zoo publish`), or unset LILNETX_ZOO_URL")
    try:
        actual = describe(path)
    except ValueError as exc:  # lilnetx.ArtifactError: not a valid artifact, or its plugin is not installed
        raise UnverifiedArtifactError(f"cannot check {name} (sha256 {claimed.sha256[:12]}) from {where}: "
                                      f"{exc}; {fix}") from None
    if found := disagreements(claimed, actual):
        raise UnverifiedArtifactError(f"{name}: the index of {where} does not describe its artifact "
                                      f"(sha256 {claimed.sha256[:12]}): {'; '.join(found)}; {fix}")
    return actual


@dataclass
class ReindexReport:
    """What ``Zoo.reindex`` changed."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class Zoo:
    """Catalog + store (+ remote zoo). Build one with :meth:`from_env` or explicitly in tests."""

    engine: Engine
    store: Store
    remote_url: str | None = None
    offline: bool = False
    remote_error: RemoteZooError | None = None

    @classmethod
    def from_env(cls) -> Zoo:
        """The zoo the environment describes, seeded from the shipped artifacts and synced with the remote."""
        zoo = cls(get_engine(), Store(), os.environ.get("LILNETX_ZOO_URL") or None, _offline_from_env())
        from zoo.seed import seed_shipped  # seed needs Zoo: imported here to avoid an import cycle

        seed_shipped(zoo)
        key = (str(zoo.engine.url), zoo.remote_url or "")
        if zoo.remote_url and not zoo.offline and key not in _synced:
            try:
                zoo.sync_remote()
                _synced.add(key)
            except RemoteZooError as exc:
                zoo.remote_error = exc
                log.warning("lilnetx: using the local catalog only: %s", exc)
        return zoo

    # -- reading -----------------------------------------------------------------------------------------

    def list(self, pattern: str = "*", *, dataset: str | None = None, max_bytes: int | None = None,
             min_accuracy: float | None = None,
             min_slice_sparsity: float | None = None) -> list[dict[str, Any]]:
        """Summaries (name, dataset, bytes, accuracy, sparsity, ...) of the matching entries, by name."""
        _check_fraction(min_accuracy, "min_accuracy")
        _check_fraction(min_slice_sparsity, "min_slice_sparsity")
        with session_scope(self.engine) as session:
            entries = queries.find_entries(session, pattern, dataset=dataset, max_bytes=max_bytes,
                                           min_accuracy=min_accuracy, min_slice_sparsity=min_slice_sparsity)
            return [self._summary(e) for e in entries]

    def _summary(self, entry: ZooEntry) -> dict[str, Any]:
        """``verified`` is False for an entry copied from a remote index that no pull has checked yet."""
        a, m = entry.artifact, entry.artifact.metrics
        return {"name": entry.name, "dataset": entry.dataset, "bytes": a.size_bytes, "top1": m.top1,
                "top5": m.top5, "compression_ratio": m.fp32_bytes / a.size_bytes, "params": m.params,
                "slice_sparsity": m.slice_sparsity, "macs_sparse": m.macs_sparse, "sha256": a.sha256,
                "cached": self.store.object_path(a.sha256).is_file(), "verified": a.verified}

    def card(self, name: str) -> dict[str, Any]:
        """The model card of entry ``name`` (see ``zoo.model_card``)."""
        with session_scope(self.engine) as session:
            entry = self._require(session, name)
            return model_card(entry.name, entry.dataset, queries.artifact_record(entry.artifact))

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

    # -- pulling -----------------------------------------------------------------------------------------

    def pull(self, name: str, dest: str | Path | None = None) -> Path:
        """The verified artifact of ``name``: from the store, else fetched from the remote zoo.

        An entry copied from a remote zoo's index is first checked against the artifact itself (decoded and
        measured): a file that is not what the index claims raises :class:`UnverifiedArtifactError` and is
        not stored. ``dest`` (a folder, or a path ending in ``.lnx``) receives a copy; otherwise the store's
        read-only file is returned.
        """
        with session_scope(self.engine) as session:
            artifact = self._require(session, name).artifact
            claimed, uri, verified = queries.artifact_record(artifact), artifact.uri, artifact.verified
        sha = claimed.sha256
        checked: list[ArtifactRecord] = []

        def check(path: Path) -> None:
            checked.append(_check_claims(name, claimed, uri, path))

        path = self.store.get(sha) or self._fetch(name, sha, claimed.size_bytes, uri,
                                                  None if verified else check)
        if not verified:
            if not checked:  # the store already held the bytes (fetched for another catalog, or concurrently)
                check(path)
            run_write(self.engine, lambda session: queries.upsert_artifact(session, checked[0], uri,
                                                                           verified=True))
        if self.store.ref(name) != sha:
            self.store.set_ref(name, sha)
        if dest is None:
            return path
        dest = Path(dest)
        target = dest if dest.suffix == ".lnx" else dest / f"{to_filename(name)}.lnx"
        copy_file_atomic(path, target)
        return target

    def _fetch(self, name: str, sha: str, size: int, uri: str, check: Callable[[Path], None] | None) -> Path:
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
        """Verify the artifact at ``path``, store it and catalogue it as ``ARCH.TAG``; return the name.

        Nothing is added when verification fails.
        """
        from zoo.ingest import describe  # imports torch and lilnetx: only when adding

        record = describe(Path(path))
        name = make_name(record.arch, tag)
        dataset = check_tag_dataset(tag, record.dataset)
        sha, _ = self.store.put_file(Path(path))
        if sha != record.sha256:
            raise ChecksumError(f"{path} changed while it was being added; add it again")
        self.catalogue(name, dataset, record, f"{queries.STORE_URI}{sha}", replace=replace)
        return name

    def catalogue(self, name: str, dataset: str, record: ArtifactRecord, uri: str, *,
                  replace: bool = False) -> None:
        """Catalogue an already described artifact as ``name`` and point the store's ref at it."""

        def work(session: Session) -> None:
            queries.add_entry(session, name, dataset, record, uri, verified=True, replace=replace)
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
                record = describe(path)
                arch, tag = split_name(name)
                if arch != record.arch:
                    raise InvalidNameError(f"the artifact holds architecture {record.arch!r}, not {arch!r}")
                dataset = check_tag_dataset(tag, record.dataset)
            except ValueError as exc:  # an artifact this installation cannot decode, or a name that lies
                report.skipped.append(name)
                log.warning("cannot reindex %s: %s", name, exc)
                continue
            self.catalogue(name, dataset, record, f"{queries.STORE_URI}{sha}", replace=True)
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

    def sync_remote(self) -> int:
        """Catalogue the remote zoo's entries that the local catalog lacks; return how many were added.

        Local entries shadow remote ones of the same name; artifacts are only downloaded (and the index's
        description of them checked) when pulled.
        """
        if not self.remote_url:
            raise RemoteZooError("no remote zoo: set LILNETX_ZOO_URL (file://, http(s)://, s3://...)")
        base = self.remote_url
        entries = remote.fetch_index(base)

        def work(session: Session) -> int:
            added = 0
            for item in entries:
                existing = queries.get_entry(session, item.name)
                if existing is not None and existing.artifact.sha256 != item.artifact.sha256:
                    continue
                try:
                    dataset = check_tag_dataset(split_name(item.name)[1], item.artifact.dataset)
                except InvalidNameError as exc:
                    log.warning("skipping remote entry %s: %s", item.name, exc)
                    continue
                known = queries.get_artifact(session, item.artifact.sha256)
                if known is not None and known.verified and (
                        found := disagreements(item.artifact, queries.artifact_record(known))):
                    log.warning("skipping remote entry %s: the index does not describe its artifact: %s",
                                item.name, "; ".join(found))
                    continue
                queries.add_entry(session, item.name, dataset, item.artifact,
                                  remote.artifact_url(base, item.artifact.sha256), verified=False)
                added += existing is None
            return added

        return run_write(self.engine, work)

    def publish(self, dest: str) -> tuple[str, int]:
        """Write every catalogued entry as a static zoo at ``dest`` (fetching missing artifacts first)."""
        with session_scope(self.engine) as session:
            items = [remote.IndexEntry(e.name, e.dataset, queries.artifact_record(e.artifact))
                     for e in queries.find_entries(session)]
        if not items:
            raise EntryNotFoundError("the catalog is empty: `lilnetx zoo add` models before publishing")
        pairs = [(item, self.pull(item.name)) for item in items]
        return remote.publish(pairs, dest), len(pairs)

