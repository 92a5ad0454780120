"""Adding a ``.lnx`` file uploaded from the browser: every check runs before the catalog is touched.

``check_upload`` verifies the bytes (size limit, framing and sha256, header, architecture plugin installed
and checked against the header before anything is decoded, decodes into a model) and ``add_upload`` adds
them through the zoo's normal ``Zoo.add`` path, when this server lets the visitor write
(``dashboard.access``) and the bytes are not in the zoo already. Each failure is an :class:`UploadError`
whose message names the problem and the fix.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lilnetx
from dashboard import access
from zoo.errors import EntryExistsError, InvalidNameError, ZooError
from zoo.names import check_tag, check_tag_dataset, make_name

if TYPE_CHECKING:
    from zoo.service import Zoo

MAX_UPLOAD_BYTES = 50_000_000


class UploadError(ZooError, ValueError):
    """An uploaded file that cannot be added; the message says why and what to do."""


@dataclass(frozen=True)
class CheckedUpload:
    """An uploaded artifact that passed every check."""

    sha256: str
    size_bytes: int
    arch: str
    dataset: str | None
    header: dict[str, Any]
    params: int


@contextmanager
def _as_file(data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lilnetx-upload-") as tmp:
        path = Path(tmp) / "upload.lnx"
        path.write_bytes(data)
        yield path


def check_upload(data: bytes, *, filename: str = "the file", max_bytes: int = MAX_UPLOAD_BYTES) -> CheckedUpload:
    """Verify an uploaded artifact without touching the catalog; :class:`UploadError` if it is not valid.

    Messages name the file as ``filename`` (the name the browser sent), never the temporary copy.
    """
    if not data:
        raise UploadError("the file is empty: choose a .lnx file written by `lilnetx export` or lilnetx.save")
    if len(data) > max_bytes:
        raise UploadError(f"the file is {len(data):,} bytes, over the dashboard's limit of {max_bytes:,}: add "
                          "it from the command line instead (`lilnetx zoo add FILE.lnx --tag TAG`)")
    from zoo.registry import UnknownArchitectureError, get_architecture

    with _as_file(data) as path:
        try:
            header = lilnetx.read_header(path)  # framing, checksum, header and the reader's limits
        except lilnetx.ArtifactError as exc:
            raise UploadError(f"not a valid .lnx artifact: {str(exc).replace(str(path), filename)}") from None
        try:
            get_architecture(header["arch"])
        except UnknownArchitectureError:
            raise UploadError(f"its architecture {header['arch']!r} is not provided by any installed plugin: "
                              "install the plugin that registers it (see the Plugins page), then upload it "
                              "again") from None
        from lilnetx.artifact.rebuild import read_and_load
        from zoo.file_options import check_header_claims

        try:
            artifact, model = read_and_load(path)  # the architecture checked against the header first
            check_header_claims(artifact.header, filename)
        except (lilnetx.ArtifactError, RuntimeError, TypeError) as exc:
            raise UploadError(f"the file does not decode into its architecture's model: "
                              f"{str(exc).replace(str(path), filename)}; export the model again with "
                              "`lilnetx export`") from None
    return CheckedUpload(sha256=artifact.sha256, size_bytes=artifact.size_bytes, arch=header["arch"],
                         dataset=header.get("dataset"), header=header,
                         params=sum(p.numel() for p in model.parameters()))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def names_in_zoo(zoo: Zoo, sha256: str) -> list[str]:
    """The entries of ``zoo`` whose artifact is exactly these bytes."""
    return [entry["name"] for entry in zoo.list() if entry["sha256"] == sha256]


def suggested_tag(checked: CheckedUpload) -> str:
    """A tag that passes the zoo's rules: the dataset, then ``upload`` and the first sha256 digits."""
    return f"{checked.dataset or 'data'}-upload-{checked.sha256[:8]}"


def entry_name(checked: CheckedUpload, tag: str) -> str:
    """The entry name ``ARCH.TAG`` the upload would get; :class:`UploadError` for a tag the zoo refuses."""
    try:
        check_tag(tag)
        check_tag_dataset(tag, checked.dataset)
        return make_name(checked.arch, tag)
    except InvalidNameError as exc:
        raise UploadError(str(exc)) from None


def add_upload(zoo: Zoo, data: bytes, tag: str, *, token: str | None = None) -> str:
    """Check ``data`` and add it to ``zoo`` as ``ARCH.TAG``; return the entry name.

    Nothing is stored when this server does not let the visitor (who typed ``token``) write, when a check
    fails, when the tag is invalid, when the name is taken or when the bytes are in the zoo already.
    """
    if not access.may_write(token):
        raise UploadError(access.describe_mode(access.current_mode()) if access.current_mode() == "off" else
                          "the token is wrong: give the token this dashboard was started with")
    checked = check_upload(data)
    entry_name(checked, tag)
    if names := names_in_zoo(zoo, checked.sha256):
        raise UploadError(f"these bytes are already in the zoo as {names[0]}; nothing was added")
    with _as_file(data) as path:
        try:
            return zoo.add(path, tag)
        except EntryExistsError as exc:
            raise UploadError(f"{exc}; choose another tag") from None
