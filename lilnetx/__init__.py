"""LilNetX: tiny, structurally sparse networks through entropy-penalised reparameterisation.

Public API: ``reparameterize``, ``objective``, ``train`` / ``TrainConfig``, ``stats``, ``strip``
(and, from the artifact codec, ``save`` / ``load``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {  # public name -> the module that defines it; imported on first use, so that importing a light
    # submodule (``lilnetx.files``, ``lilnetx.errors``) does not import torch
    **dict.fromkeys(("ArchitectureBuildError", "ArtifactError", "ArtifactInfo", "ArtifactNotFoundError",
                     "BadMagicError", "ChecksumMismatchError", "CorruptHeaderError", "DecodedArtifact",
                     "TruncatedArtifactError", "UnsupportedVersionError", "from_artifact", "load", "read_artifact",
                     "read_header", "save", "verify"), "lilnetx.artifact"),
    "FactorizedDensity": "lilnetx.density",
    "LilnetxError": "lilnetx.errors",
    "stats": "lilnetx.metrics",
    **dict.fromkeys(("Lambdas", "objective", "rate_bits"), "lilnetx.objective"),
    **dict.fromkeys(("LatentGroup", "LatentTensor", "ReparamError", "is_reparameterized", "latent_groups",
                     "latent_tensors", "reparameterize", "round_ste", "strip"), "lilnetx.reparam"),
    "slim": "lilnetx.slim",
    **dict.fromkeys(("CheckpointError", "ConfigError", "TrainConfig", "Trainer", "evaluate", "train"),
                    "lilnetx.training"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The public names, imported lazily (submodules such as ``lilnetx.artifact`` import as usual)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lilnetx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """Importing a submodule binds it on its package; ``lilnetx.slim`` and ``lilnetx.objective`` are public
    functions named like their modules, so a submodule never replaces an exported name (``import
    lilnetx.slim`` still works through ``sys.modules``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
