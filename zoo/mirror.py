"""The remote mirror of a zoo: a static zoo (``LILNETX_ZOO_URL``) whose index is copied into the local catalog
and whose artifacts are fetched, admitted and stored on their first pull; and publishing the local catalog as
such a zoo.

The index is read on the first read that needs it (once per process and catalog); its new entries are
catalogued unverified (the index only claims to describe its files) and only when the catalog is writable.
A fetched file enters the store only after :func:`zoo.admission.admit` found it to be what the index claims.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from zoo.admission import Admission
from zoo.catalog import queries
from zoo.catalog.engine import run_write, session_scope
from zoo.catalog.records import ArtifactRecord, disagreements
from zoo.errors import (
    CatalogError,
    ChecksumError,
    EntryNotFoundError,
    OfflineError,
    RemoteZooError,
    UnverifiedArtifactError,
)
from zoo.names import split_name
from zoo.store import Store

if TYPE_CHECKING:
    from zoo.remote import IndexEntry
    from zoo.service import Zoo

log = logging.getLogger(__name__)
_synced: set[tuple[str, str]] = set()  # (catalog URL, zoo URL) pairs already synced by this process


def _rejection_fix(where: str) -> str:
    return (f"it was rejected and nothing was stored. The index of {where} is wrong or was tampered with: ask "
            "its publisher to republish it (`lilnetx zoo publish`), or unset LILNETX_ZOO_URL")


def sync_once(zoo: Zoo) -> None:
    """Sync the remote zoo on the first read that needs it (once per process and catalog)."""
    if not zoo.remote_url or zoo.offline or zoo.remote_error is not None:
        return
    key = (str(zoo.engine.url), zoo.remote_url)
    if key in _synced:
        return
    try:
        sync(zoo)
    except RemoteZooError as exc:
        zoo.remote_error = exc
        log.warning("lilnetx: using the local catalog only: %s", exc)
        return
    except CatalogError as exc:  # e.g. a read-only catalog file
        log.warning("lilnetx: the remote zoo's new entries are not listed: the catalog cannot record them (%s)",
                    exc)
    _synced.add(key)


def sync(zoo: Zoo) -> int:
    """Catalogue the remote zoo's entries that the local catalog lacks; return how many were added.

    Local entries shadow remote ones of the same name; artifacts are only downloaded (and admitted) when
    pulled. Reads the catalog first and writes only when the index holds something new.
    """
    if not zoo.remote_url:
        raise RemoteZooError("no remote zoo: set LILNETX_ZOO_URL (file://, http(s)://, s3://...)")
    from zoo import remote  # fsspec and aiohttp: imported only when a remote zoo is used

    base = zoo.remote_url
    entries = remote.fetch_index(base)
    with session_scope(zoo.engine) as session:
        todo = [item for item in entries if _is_new(session, item, warn=True)]
    if not todo:
        return 0

    def work(session: Session) -> int:
        added = 0
        for item in todo:
            if not _is_new(session, item, warn=False):  # changed since the read above
                continue
            added += queries.get_entry(session, item.name) is None
            queries.add_entry(session, item.name, item.dataset, item.artifact,
                              remote.artifact_url(base, item.artifact.sha256), verified=False)
        return added

    return run_write(zoo.engine, work)


def _is_new(session: Session, item: IndexEntry, *, warn: bool) -> bool:
    """Whether catalogging remote entry ``item`` would change the catalog (and is allowed to)."""
    if queries.get_entry(session, item.name) is not None:  # a local entry of that name wins (or is it)
        return False
    known = queries.get_artifact(session, item.artifact.sha256)
    if known is not None and known.verified and (
            found := disagreements(item.artifact, queries.artifact_record(known))):
        if warn:
            log.warning("skipping remote entry %s: the index does not describe its artifact: %s", item.name,
                        "; ".join(found))
        return False
    return True


def fetch(zoo: Zoo, name: str, claimed: ArtifactRecord, uri: str, *, admit: bool
          ) -> tuple[Path, Admission | None]:
    """Download entry ``name``'s artifact, admit it against the index's ``claimed`` record (``admit``: an
    entry no pull has checked yet) and store it.

    The bytes are hash-checked into a scratch folder first; a file that is not what the index claims raises
    :class:`UnverifiedArtifactError` and never enters the store.
    """
    from zoo import remote

    sha = claimed.sha256
    if zoo.offline:
        raise OfflineError(f"{name} (sha256 {sha[:12]}) is not in the local cache {zoo.store.root} and "
                           "LILNETX_OFFLINE=1 forbids downloading it; unset LILNETX_OFFLINE to fetch it")
    urls = [] if uri.startswith(queries.STORE_URI) else [uri]
    if zoo.remote_url and remote.artifact_url(zoo.remote_url, sha) not in urls:
        urls.append(remote.artifact_url(zoo.remote_url, sha))
    if not urls:
        raise EntryNotFoundError(
            f"the artifact of {name} (sha256 {sha[:12]}) is missing from the store {zoo.store.root} and no "
            f"remote zoo is known; set LILNETX_ZOO_URL to a zoo that has it, or re-add it with "
            f"`lilnetx zoo add FILE.lnx --tag {split_name(name)[1]}`")
    zoo.store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=zoo.store.root) as scratch:
        failures: list[RemoteZooError | ChecksumError] = []
        for url in urls:
            try:
                downloaded = remote.fetch_artifact(url, sha, claimed.size_bytes, Store(scratch))
                break
            except (RemoteZooError, ChecksumError) as exc:
                failures.append(exc)
        else:
            raise type(failures[-1])("; ".join(str(f) for f in failures))
        admission = admit_remote(zoo, name, claimed, uri, downloaded) if admit else None
        return zoo.store.put_file(downloaded, sha256=sha)[1], admission


def admit_remote(zoo: Zoo, name: str, claimed: ArtifactRecord, uri: str, path: Path) -> Admission:
    """Admit a remote entry's file; :class:`UnverifiedArtifactError` unless it is what the index claims."""
    from zoo import remote

    where = f"the zoo at {remote.zoo_url(uri, claimed.sha256)}"
    try:
        admission = zoo.admit(name, path, claimed=claimed)
    except ValueError as exc:  # lilnetx.ArtifactError: not a valid artifact, or its plugin is not installed
        raise UnverifiedArtifactError(f"cannot check {name} (sha256 {claimed.sha256[:12]}) from {where}: {exc}; "
                                      f"{_rejection_fix(where)}") from None
    if admission.problems:
        raise UnverifiedArtifactError(f"{name}: the index of {where} does not describe its artifact (sha256 "
                                      f"{claimed.sha256[:12]}): {'; '.join(admission.problems)}; "
                                      f"{_rejection_fix(where)}")
    return admission


def record_admitted(zoo: Zoo, name: str, uri: str, admission: Admission) -> None:
    """Mark a pulled remote artifact verified (and measured); a read-only catalog keeps it unverified."""

    def work(session: Session) -> None:
        queries.upsert_artifact(session, admission.record, uri, verified=True)
        if admission.measured is not None:
            queries.set_measurement(session, admission.record.sha256, admission.measured)

    try:
        run_write(zoo.engine, work)
    except CatalogError as exc:
        log.warning("lilnetx: %s was checked, but the catalog cannot record it (%s)", name, exc)


def publish(zoo: Zoo, dest: str) -> tuple[str, int]:
    """Write every catalogued entry as a static zoo at ``dest`` (fetching missing artifacts first)."""
    from zoo import remote

    with session_scope(zoo.engine) as session:
        items = [remote.IndexEntry(e.name, e.dataset, queries.artifact_record(e.artifact))
                 for e in queries.find_entries(session)]
    if not items:
        raise EntryNotFoundError("the catalog is empty: `lilnetx zoo add` models before publishing")
    pairs = [(item, zoo.pull(item.name)) for item in items]
    return remote.publish(pairs, dest), len(pairs)
