"""The compiled inference kernels (``lilnetx/csrc/sparse_conv.cpp``): slice-sparse convolution, a linear layer over
its non-zero weights and max pooling, as one extension.

It is built once per instruction set (AVX-512, AVX2, or ``-march=native`` elsewhere) by :mod:`lilnetx.native`; the
best variant this CPU runs is loaded (``LILNETX_SPARSE_ISA=avx2`` picks another). ``lilnetx build-kernels`` (run by
``make``) builds it ahead of first use. Where no compiler exists or the build fails, a warning says so once and
every layer runs PyTorch's own op.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any

from lilnetx import native

SOURCE = native.CSRC / "sparse_conv.cpp"
KERNELS = native.CSRC / "sparse_conv_kernels.h"  # the torch-free loops SOURCE includes
PREFIX = "lilnetx_sparse_conv"
ISA_ENV = "LILNETX_SPARSE_ISA"


def kernel_isa() -> native.Isa:
    """The instruction-set variant this process uses: ``$LILNETX_SPARSE_ISA`` or the best the CPU runs."""
    name = os.environ.get(ISA_ENV)
    return native.isa_named(name) if name else native.runnable_isas()[0]


@functools.cache
def _load(isa: native.Isa) -> ModuleType | None:
    return native.build_isa(SOURCE, PREFIX, isa, owner="lilnetx.kernels", fallback="layers run PyTorch's ops")


def kernel_built() -> bool:
    """Whether the kernels for :func:`kernel_isa` are already compiled (so no build is due)."""
    return native.is_built(SOURCE, PREFIX, kernel_isa())


def load_extension() -> ModuleType | None:
    """The compiled kernels for :func:`kernel_isa`, built on first use; ``None`` (one warning) where they cannot be."""
    return _load(kernel_isa())


def extension() -> ModuleType | None:
    """:func:`load_extension`, remembered for this process's ISA choice (a cheap call per layer and forward)."""
    isa = os.environ.get(ISA_ENV, "")
    if _loaded.get("isa") != isa:
        _loaded.clear()
        _loaded.update(isa=isa, ext=load_extension())
    return _loaded["ext"]


def build_name() -> str:
    """The loaded build's module name (it changes with the kernels' source, torch and the ISA), or ``"none"``."""
    ext = extension()
    return ext.__name__ if ext is not None else "none"


def required() -> ModuleType:
    """:func:`extension`, or :class:`lilnetx.native.NativeKernelError` saying that it could not be built."""
    ext = extension()
    if ext is None:
        raise native.NativeKernelError("the inference kernels could not be built here (see the warning); "
                                       "run the layer's PyTorch form")
    return ext


def op(name: str) -> Any:
    """Kernel ``name``: the TorchScript operator while tracing (so traced graphs call it without Python), else the
    Python binding (a little cheaper per call)."""
    import torch

    ext = required()
    return getattr(getattr(torch.ops, ext.__name__), name) if torch.jit.is_tracing() else getattr(ext, name)


_loaded: dict[str, Any] = {}
