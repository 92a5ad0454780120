"""A static zoo at any fsspec URL: ``index.json`` plus ``artifacts/<sha256[:2]>/<sha256>.lnx``.

``publish`` writes one (a local folder, ``s3://``, ...) that any web server or object store can serve;
``fetch_index`` and ``fetch_artifact`` read one (``file://``, ``http(s)://``, ``s3://``...). An artifact's
location is computed from its sha256, never taken from the index, and every byte fetched is hashed
before it enters the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import fsspec
from fsspec.core import url_to_fs

from zoo.catalog.records import ArtifactRecord, RecordError, from_legacy
from zoo.errors import ChecksumError, InvalidNameError, RemoteZooError
from zoo.names import check_sha256, check_tag_dataset, split_name
from zoo.store import Store, read_chunks

INDEX = "index.json"
INDEX_FORMAT = "lilnetx-zoo-index/2"
LEGACY_FORMAT = "lilnetx-zoo-index/1"  # one mixed slice sparsity per record (see ``records.from_legacy``)
MAX_INDEX_BYTES = 64 << 20
CONNECT_TIMEOUT_S = 30  # to open a connection
READ_TIMEOUT_S = 60  # between two reads of a body: a slow download goes on as long as bytes arrive
PROGRESS_BYTES = 1 << 20  # downloads at least this large show a progress bar on a terminal
_TRANSPORT_ERRORS = (OSError, aiohttp.ClientError, asyncio.TimeoutError, ImportError, ValueError,
                     NotImplementedError)
READ_FIX = "check LILNETX_ZOO_URL and the network, or set LILNETX_OFFLINE=1 to use only the local cache"
log = logging.getLogger(__name__)
PUBLISH_FIX = ("publish to a writable folder or object store (s3:// needs s3fs; http(s):// is read-only: "
               "publish into the folder your web server serves)")


@dataclass(frozen=True)
class IndexEntry:
    """One entry of a static zoo's index."""

    name: str
    dataset: str
    artifact: ArtifactRecord

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset, "artifact": self.artifact.to_dict()}


def artifact_url(base: str, sha256: str) -> str:
    """Where the zoo at ``base`` keeps the artifact ``sha256``."""
    check_sha256(sha256)
    return f"{base.rstrip('/')}/artifacts/{sha256[:2]}/{sha256}.lnx"


def zoo_url(url: str, sha256: str) -> str:
    """The base URL of the zoo whose artifact ``sha256`` is at ``url`` (the inverse of :func:`artifact_url`)."""
    return check_artifact_url(url, sha256).removesuffix(f"/artifacts/{sha256[:2]}/{sha256}.lnx")


def check_artifact_url(url: str, sha256: str) -> str:
    """``url`` if it is a content-addressed location of ``sha256`` without ``..`` segments, else raise."""
    suffix = f"/artifacts/{sha256[:2]}/{sha256}.lnx"
    if not url.endswith(suffix) or ".." in url.split("/") or "\\" in url:
        raise InvalidNameError(f"refusing artifact URI {url!r}: expected ZOO_URL{suffix}")
    return url


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    options: dict[str, Any] = {}
    if url.startswith(("http://", "https://")):
        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                                                     sock_read=READ_TIMEOUT_S)}
    return url_to_fs(url, **options)


def _reason(exc: BaseException) -> str:
    """The root cause of a transport error, e.g. the refused connection behind fsspec's FileNotFoundError."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, FileNotFoundError):
        return "not found"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@contextmanager
def _remote(what: str, url: str, fix: str = READ_FIX) -> Iterator[None]:
    """Turn transport errors (refused connection, 404, timeout, missing fsspec backend) into one message."""
    try:
        yield
    except _TRANSPORT_ERRORS as exc:
        reason = _reason(exc)
        raise RemoteZooError(f"cannot {what} {url} ({reason}); {fix}") from None


@contextmanager
def _open_read(url: str) -> Iterator[IO[bytes]]:
    fs, path = _filesystem(url)
    kwargs = {"block_size": 0} if url.startswith(("http://", "https://")) else {}  # stream, no range requests
    with fs.open(path, "rb", **kwargs) as f:
        yield f


def fetch_index(base: str) -> list[IndexEntry]:
    """The valid entries of the zoo at ``base``; :class:`RemoteZooError` when unreachable or not an index.

    Every field of every entry is type- and range-checked (:meth:`ArtifactRecord.from_dict`); an entry that
    fails is skipped with a warning naming it and the field, and the others are returned.
    """
    url = f"{base.rstrip('/')}/{INDEX}"
    with _remote("read the zoo index", url), _open_read(url) as f:
        try:
            raw = b"".join(read_chunks(f, MAX_INDEX_BYTES, url))
        except ChecksumError as exc:  # over the size limit: the index is skipped like an unreachable one
            raise RemoteZooError(f"{exc}; {READ_FIX}") from None
    return parse_index(raw, url)


def parse_index(raw: bytes, url: str) -> list[IndexEntry]:
    """The valid entries of the index bytes ``raw`` read from ``url`` (see :func:`fetch_index`)."""
    fix = "republish it with `lilnetx zoo publish`"
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RemoteZooError(f"malformed zoo index {url}: not JSON ({exc}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") not in (INDEX_FORMAT, LEGACY_FORMAT):
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise RemoteZooError(f"malformed zoo index {url}: format {found!r}, expected {INDEX_FORMAT!r}; {fix}")
    items = data.get("entries")
    if not isinstance(items, list):
        raise RemoteZooError(f"malformed zoo index {url}: 'entries' is not a list; {fix}")
    entries, seen = [], set()
    for position, item in enumerate(items):
        label = item.get("name") if isinstance(item, dict) and isinstance(item.get("name"), str) else None
        label = repr(label[:140]) if label is not None else f"#{position}"
        try:
            entry = _index_entry(item, legacy=data["format"] == LEGACY_FORMAT)
            if entry.name in seen:
                raise ValueError("field name: the index lists this name twice")
        except ValueError as exc:  # RecordError, InvalidNameError
            log.warning("skipping remote entry %s of %s: %s", label, url, exc)
            continue
        seen.add(entry.name)
        entries.append(entry)
    return entries


def _index_entry(item: Any, *, legacy: bool = False) -> IndexEntry:
    if not isinstance(item, dict):
        raise RecordError("entry", "a JSON object", item)
    for key in item:
        if key not in ("name", "dataset", "artifact"):
            raise RecordError(key, "no such field", item[key])
    try:
        json.dumps(item, ensure_ascii=False).encode()
    except (UnicodeEncodeError, RecursionError):  # a lone surrogate ("\ud800"), or nesting no database stores
        raise RecordError("entry", "valid Unicode text (no lone surrogates), nested at most a few hundred deep",
                          item.get("name")) from None
    name, dataset = item.get("name"), item.get("dataset")
    if not isinstance(name, str):
        raise RecordError("name", "an entry name ARCH.TAG", name)
    try:
        arch, tag = split_name(name)
        if not isinstance(dataset, str):
            raise RecordError("dataset", "a string", dataset)
        artifact = item.get("artifact")
        record = ArtifactRecord.from_dict(from_legacy(artifact) if legacy else artifact)
        if record.arch != arch:
            raise RecordError("artifact.arch", f"the name's architecture {arch!r}", record.arch)
        if check_tag_dataset(tag, record.dataset) != dataset:
            raise RecordError("dataset", f"the tag's dataset {tag.split('-')[0]!r}", dataset)
    except InvalidNameError as exc:
        raise ValueError(f"field name: {exc}") from None
    try:  # the named fields are checked above; NaN or Infinity anywhere else (header, recipe) is refused too
        json.dumps(item, allow_nan=False)
    except ValueError:
        raise RecordError("artifact", "finite numbers only (no NaN or Infinity)", item.get("name")) from None
    return IndexEntry(name=name, dataset=dataset, artifact=record)


def fetch_artifact(url: str, sha256: str, size: int, store: Store) -> Path:
    """Download the artifact at ``url`` into ``store``, rejecting any byte that is not ``sha256``."""
    check_artifact_url(url, sha256)
    with _remote("download the artifact", url), _open_read(url) as f, _progress(f, size, sha256) as counted:
        return store.put_stream(sha256, counted, size=size, source=url)


@contextmanager
def _progress(f: IO[bytes], size: int, sha256: str) -> Iterator[IO[bytes]]:
    """``f``, with a progress bar on stderr while it is read when stderr is a terminal and ``size`` is large."""
    if size < PROGRESS_BYTES or not sys.stderr.isatty():
        yield f
        return
    from tqdm import tqdm

    with tqdm(total=size, unit="B", unit_scale=True, desc=f"pull {sha256[:12]}", leave=False) as bar:
        yield _Counted(f, bar.update)


class _Counted:
    """A binary file whose reads are reported to ``report(number of bytes)``."""

    def __init__(self, f: IO[bytes], report: Callable[[int], object]) -> None:
        self._f, self._report = f, report

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n)
        self._report(len(chunk))
        return chunk


def publish(entries: list[tuple[IndexEntry, Path]], dest: str) -> str:
    """Write ``entries`` (with their local artifact files) as a static zoo at ``dest``; return the index URL.

    Artifacts are copied first and the index last, each through a temporary name, so readers never see an
    index that points at a missing file. Entries already in ``dest``'s index under other names are kept.
    """
    fs, root = _filesystem(dest)
    index_path = posixpath.join(root, INDEX)
    with _remote("publish to", dest, PUBLISH_FIX):
        existing: dict[str, dict[str, Any]] = {}
        if fs.exists(index_path):  # its valid entries are kept; invalid ones are dropped, with a warning
            existing = {e.name: e.to_dict() for e in parse_index(fs.cat_file(index_path), index_path)}
        for entry, local in entries:
            sha = entry.artifact.sha256
            target = posixpath.join(root, "artifacts", sha[:2], f"{sha}.lnx")
            if not (fs.exists(target) and fs.size(target) == entry.artifact.size_bytes):
                fs.makedirs(posixpath.dirname(target), exist_ok=True)
                _put_atomic(fs, str(local), target)
            existing[entry.name] = entry.to_dict()
        payload = {"format": INDEX_FORMAT, "entries": [existing[name] for name in sorted(existing)]}
        fs.makedirs(root, exist_ok=True)
        partial = f"{index_path}.partial-{os.getpid()}"
        fs.pipe_file(partial, json.dumps(payload, indent=1, sort_keys=True, allow_nan=False).encode())
        fs.mv(partial, index_path)
    return index_path


def _put_atomic(fs: fsspec.AbstractFileSystem, local: str, target: str) -> None:
    partial = f"{target}.partial-{os.getpid()}"
    fs.put_file(local, partial)
    fs.mv(partial, target)
