"""The errors a ``.lnx`` file can raise; every message says what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lilnetx.errors import LilnetxError


class ArtifactError(LilnetxError, ValueError):
    """Base class: a ``.lnx`` file that cannot be written, read or rebuilt. The message says what to do."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """No readable file at the given path (also a ``FileNotFoundError``)."""


def read_file(path: str | Path) -> bytes:
    """The bytes of ``path``; an ``ArtifactNotFoundError`` naming the path and the fix when there are none."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactNotFoundError(f"{path}: no such .lnx file; check the path, or get a zoo model by name "
                                    "with zoo.pull(NAME) / `lilnetx zoo pull NAME`") from exc
    except IsADirectoryError as exc:
        raise ArtifactNotFoundError(f"{path} is a folder, not a .lnx file; pass the file inside it "
                                    "(a training run folder is exported with `lilnetx export RUN_DIR -o FILE.lnx`)") from exc


class TruncatedArtifactError(ArtifactError):
    """The file is shorter than its header says: an interrupted download or copy. Fetch it again."""


class ChecksumMismatchError(ArtifactError):
    """The sha256 stored in the file does not match its bytes: the file is damaged. Fetch it again."""


class BadMagicError(ArtifactError):
    """The file does not start with the ``.lnx`` magic bytes: it is not a LilNetX artifact."""


class UnsupportedVersionError(ArtifactError):
    """The file uses a format version this lilnetx cannot read (usually newer): upgrade lilnetx."""


class CorruptHeaderError(ArtifactError):
    """The checksum matches but the content is inconsistent: the header disagrees with the data, with itself
    or with the architecture the builder builds. The file was edited or written by a broken writer."""


class ArtifactTooLargeError(ArtifactError):
    """The file declares more than this installation reads from a file (parameters, see
    ``lilnetx.artifact.validation``): set the limit higher only for files you trust."""


class ArchitectureBuildError(ArtifactError):
    """No model builder can build the file's architecture: install the plugin providing it or pass builder=."""


def corrupt(source: str, what: str) -> CorruptHeaderError:
    return CorruptHeaderError(f"{source}: {what}. The checksum matches, so the file was edited or written by a "
                              "broken writer; export the model again")


def mismatch(source: str, what: str, recorded: Any, built: Any, arch: str) -> CorruptHeaderError:
    return CorruptHeaderError(
        f"{source}: {what}: the file says {recorded} but architecture {arch!r} as built here has {built}. The "
        "file does not match this architecture: it was edited, or the architecture's code changed since export")
