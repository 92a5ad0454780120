"""Validation of zoo entry names (``arch.tag``), tags and sha256 digests.

Names end up in file names (refs, ``pull -o DIR``) and URLs, so they are checked against a strict pattern:
no separators, no ``..``, nothing that could escape a folder.
"""

from __future__ import annotations

import re

from zoo.errors import InvalidNameError

_PART = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_PART_RE = re.compile(_PART)
_NAME_RE = re.compile(rf"({_PART})\.({_PART})")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
NAME_RULE = "letters, digits, '_' and '-' (at most 64, starting with a letter or digit)"


def check_part(value: str, what: str) -> str:
    """Return ``value`` if it is a valid architecture or tag, else raise :class:`InvalidNameError`."""
    if not isinstance(value, str) or not _PART_RE.fullmatch(value):
        raise InvalidNameError(f"invalid {what} {value!r}: use {NAME_RULE}")
    return value


def split_name(name: str) -> tuple[str, str]:
    """``"lenet5_caffe.mnist-lam1e-3"`` -> ``("lenet5_caffe", "mnist-lam1e-3")``; raises on a bad name."""
    match = _NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if not match:
        raise InvalidNameError(
            f"invalid zoo entry name {name!r}: expected ARCH.TAG (e.g. lenet5_caffe.mnist-lam1e-3), "
            f"each part {NAME_RULE}"
        )
    return match.group(1), match.group(2)


def make_name(arch: str, tag: str) -> str:
    """The entry name ``arch.tag`` after checking both parts."""
    return f"{check_part(arch, 'architecture name')}.{check_part(tag, 'tag')}"


def check_tag_dataset(tag: str, dataset: str | None) -> str:
    """The entry's dataset: the artifact's own, which the tag must start with; else the tag's first word."""
    if not dataset:
        return tag.split("-", 1)[0]
    if tag != dataset and not tag.startswith(f"{dataset}-"):
        raise InvalidNameError(
            f"tag {tag!r} must start with the artifact's dataset {dataset!r}, e.g. {dataset}-{tag}"
        )
    return dataset


def check_sha256(digest: str) -> str:
    """Return ``digest`` if it is 64 lowercase hex digits."""
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
        raise InvalidNameError(f"invalid sha256 {digest!r}: expected 64 lowercase hex digits")
    return digest
