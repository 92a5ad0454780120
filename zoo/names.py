"""Validation of zoo entry names (``arch.tag``), tags and sha256 digests, and their file-name form.

An architecture is one or more ``/``-separated segments (``lenet5_caffe``, ``timm/resnet18``); a tag is one
segment without dots, so a name splits at its last dot. Names end up in file names (refs, ``pull -o DIR``,
shipped ``zoo_artifacts/``) through :func:`to_filename`, which escapes ``/`` as ``%2F``: no name can
reach outside its folder.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from zoo.errors import InvalidNameError

MAX_ARCH = 64  # the catalog's column width
_TAG = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_SEGMENT = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?"
_ARCH = rf"{_SEGMENT}(?:/{_SEGMENT})*"
_TAG_RE = re.compile(_TAG)
_ARCH_RE = re.compile(_ARCH)
_NAME_RE = re.compile(rf"({_ARCH})\.({_TAG})")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
TAG_RULE = "letters, digits, '_' and '-' (at most 64, starting with a letter or digit)"
ARCH_RULE = (f"'/'-separated segments of letters, digits, '_', '.' and '-', each starting with a letter or "
             f"digit, without '..' (at most {MAX_ARCH} characters, e.g. timm/resnet18)")


def _is_arch(value: str) -> bool:
    return len(value) <= MAX_ARCH and ".." not in value and _ARCH_RE.fullmatch(value) is not None


def check_arch(value: str) -> str:
    """Return ``value`` if it is a valid architecture name, else raise :class:`InvalidNameError`."""
    if not isinstance(value, str) or not _is_arch(value):
        raise InvalidNameError(f"invalid architecture name {value!r}: use {ARCH_RULE}")
    return value


def check_tag(value: str) -> str:
    """Return ``value`` if it is a valid tag, else raise :class:`InvalidNameError`."""
    if not isinstance(value, str) or not _TAG_RE.fullmatch(value):
        raise InvalidNameError(f"invalid tag {value!r}: use {TAG_RULE}")
    return value


def split_name(name: str) -> tuple[str, str]:
    """``"timm/resnet18.cifar10-lam1e-3"`` -> ``("timm/resnet18", "cifar10-lam1e-3")``; raises on a bad name."""
    match = _NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if not match or not _is_arch(match.group(1)):
        raise InvalidNameError(
            f"invalid zoo entry name {name!r}: expected ARCH.TAG (e.g. lenet5_caffe.mnist-lam1e-3 or "
            f"timm/resnet18.cifar10-a); the architecture is {ARCH_RULE}; the tag is {TAG_RULE}"
        )
    return match.group(1), match.group(2)


def make_name(arch: str, tag: str) -> str:
    """The entry name ``arch.tag`` after checking both parts."""
    return f"{check_arch(arch)}.{check_tag(tag)}"


def to_filename(name: str) -> str:
    """The file-name form of entry ``name`` (without suffix): ``timm/resnet18.x`` -> ``timm%2Fresnet18.x``."""
    split_name(name)
    return quote(name, safe="")


def from_filename(text: str) -> str:
    """The entry name a file is named after (the inverse of :func:`to_filename`); raises on anything else."""
    name = unquote(text)
    split_name(name)
    if to_filename(name) != text:
        raise InvalidNameError(f"{text!r} is not the file-name form of {name!r}: rename it {to_filename(name)!r}")
    return name


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
