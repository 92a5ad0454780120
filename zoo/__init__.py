"""LilNetX Zoo: architectures from plugins, a catalog of compressed models, and pulling them anywhere.

Public API: ``create_model``, ``list_architectures`` (plugins) and ``list_models``, ``pull``, ``load``
(the catalog).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "create_model": "zoo.registry",
    "list_architectures": "zoo.registry",
    "list_models": "zoo.api",
    "pull": "zoo.api",
    "load": "zoo.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import lazily so that ``import zoo`` stays cheap and never loads plugins by side effect."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
