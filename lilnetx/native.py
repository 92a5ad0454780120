"""Build a C++ extension from ``lilnetx/csrc`` on first use; ``None`` (with one warning) where that fails.

Sources are compiled with ``torch.utils.cpp_extension`` (``-O3 -march=native -fopenmp -fno-trapping-math``) and
cached in torch's extension folder (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) under a name
keyed by the source, torch version, CPU and flags, so an edited source, another torch or another machine builds
afresh. Callers keep a pure PyTorch path for the ``None`` case (no compiler, failed build).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from lilnetx.errors import LilnetxError

CSRC = Path(__file__).parent / "csrc"


class NativeKernelError(LilnetxError):
    """A C++ kernel was asked for where it could not be built; the message names the pure PyTorch path."""
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-trapping-math")  # the last: float selects vectorise; same values


def cpu_key() -> str:
    """CPU model and feature flags: a kernel built with ``-march=native`` is only valid on the same CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
        model = next((line for line in info.splitlines() if line.startswith("model name")), "")
    except OSError:
        flags, model = "", ""
    return f"{platform.machine()} {model} {flags}"


def build(source: Path, prefix: str, *, owner: str, fallback: str) -> ModuleType | None:
    """The extension compiled from ``source`` (module name ``prefix_<hash>``), or ``None`` after one warning
    ``"{owner}: ...; {fallback}"`` naming why (no compiler, build error). Callers cache the result."""
    if not shutil.which(os.environ.get("CXX", "c++")):
        warnings.warn(f"{owner}: no C++ compiler found (install g++); {fallback}", stacklevel=3)
        return None
    import torch  # lazily: this module is imported by code that may never build anything

    text = source.read_text()
    key = hashlib.sha256("\n".join((text, torch.__version__, cpu_key(), " ".join(CFLAGS))).encode())
    name = f"{prefix}_{key.hexdigest()[:12]}"
    try:
        return cpp_extension_load()(name, [str(source)], extra_cflags=list(CFLAGS), extra_ldflags=["-fopenmp"],
                                    verbose=False)
    except Exception as exc:  # compiler or ninja problems: stay correct on the fallback path
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        warnings.warn(f"{owner}: building the C++ kernel failed ({type(exc).__name__}: {detail}); {fallback}",
                      stacklevel=3)
        return None


def cpp_extension_load() -> Any:
    """``torch.utils.cpp_extension.load``, imported without its "No CUDA runtime is found" warning (the kernels
    are CPU-only; on CPU builds of torch that warning is noise)."""
    ext_log = logging.getLogger("torch.utils.cpp_extension")
    level = ext_log.level
    ext_log.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        ext_log.setLevel(level)
    return load
