"""Build the C++ extensions in ``lilnetx/csrc``; ``None`` (with one warning) where a build fails.

Sources are compiled with ``torch.utils.cpp_extension`` and cached in torch's extension folder
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) under a name keyed by the source, torch version
and flags, so an edited source or another torch builds afresh. ``build`` compiles for this CPU (``-march=native``,
so the CPU is part of the key); ``build_isa`` compiles one of the instruction-set variants of :data:`ISAS` with an
explicit ``-march``, so the AVX2 variant can be built (and tested) on an AVX-512 machine too. ``lilnetx
build-kernels`` (run by ``make``) builds everything ahead of first use. Callers keep a pure PyTorch path for the
``None`` case (no compiler, failed build).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from lilnetx.errors import LilnetxError

CSRC = Path(__file__).parent / "csrc"
COMMON_FLAGS = ("-O3", "-fopenmp", "-fno-trapping-math")  # the last: float selects vectorise; same values
CFLAGS = ("-march=native", *COMMON_FLAGS)
KERNEL_FLAGS = ("-fno-tree-loop-distribute-patterns",)  # the inference kernels' short loops stay loops
STALE_LOCK_S = 15 * 60


class NativeKernelError(LilnetxError):
    """A C++ kernel was asked for where it could not be built; the message names the pure PyTorch path."""


@dataclass(frozen=True)
class Isa:
    """One instruction-set variant of a kernel: its compiler flags and the CPU flags it needs to run."""

    name: str
    march: str
    vector_width: int  # floats per vector register
    registers: int  # vector registers the register blocks may fill
    requires: tuple[str, ...]

    @property
    def flags(self) -> tuple[str, ...]:
        return (f"-march={self.march}", f"-DLNX_VW={self.vector_width}", f"-DLNX_NREG={self.registers}",
                *COMMON_FLAGS, *KERNEL_FLAGS)


ISAS = (  # best first
    Isa("avx512", "x86-64-v4", 16, 32, ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma")),
    Isa("avx2", "x86-64-v3", 8, 16, ("avx2", "fma", "bmi2", "f16c")),
)
GENERIC = Isa("generic", "native", 4, 16, ())


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in info.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def cpu_model() -> str:
    """The CPU's model name, or the machine type where ``/proc/cpuinfo`` does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_key() -> str:
    """CPU model and feature flags: a kernel built with ``-march=native`` is only valid on the same CPU."""
    return f"{platform.machine()} {cpu_model()} {' '.join(sorted(cpu_flags()))}"


def runnable_isas() -> list[Isa]:
    """The variants this CPU can run, best first (``generic``: ``-march=native`` off x86-64)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return [GENERIC]
    return [isa for isa in ISAS if set(isa.requires) <= cpu_flags()] or [GENERIC]


def isa_named(name: str) -> Isa:
    """The variant called ``name`` (``avx512``, ``avx2``, ``generic``)."""
    for isa in (*ISAS, GENERIC):
        if isa.name == name:
            return isa
    raise NativeKernelError(f"unknown instruction set {name!r}; known: {', '.join(i.name for i in (*ISAS, GENERIC))}")


def build(source: Path, prefix: str, *, owner: str, fallback: str) -> ModuleType | None:
    """The extension compiled from ``source`` for this CPU (``-march=native``), or ``None`` after one warning
    ``"{owner}: ...; {fallback}"`` naming why (no compiler, build error). Callers cache the result."""
    return _build(source, prefix, CFLAGS, cpu_key(), owner=owner, fallback=fallback)


def build_isa(source: Path, prefix: str, isa: Isa, *, owner: str, fallback: str) -> ModuleType | None:
    """``source`` compiled for ``isa`` (module ``prefix_<isa>_<hash>``). Only for an ``isa`` this CPU runs
    (:func:`runnable_isas`): loading a variant for another CPU could fault; :func:`compile_check` compiles one."""
    if isa not in runnable_isas():
        raise NativeKernelError(f"this CPU cannot run the {isa.name} variant; use lilnetx.native.compile_check")
    key = cpu_key() if isa is GENERIC else isa.name
    return _build(source, f"{prefix}_{isa.name}", isa.flags, key, owner=owner, fallback=fallback)


def is_built(source: Path, prefix: str, isa: Isa) -> bool:
    """Whether :func:`build_isa` finds ``source`` already compiled for ``isa`` (no compiler run needed)."""
    name = _module_name(source, f"{prefix}_{isa.name}", isa.flags, cpu_key() if isa is GENERIC else isa.name)
    return (_build_folder(name) / f"{name}.so").is_file()


def compile_check(header: Path, isa: Isa, out_dir: Path) -> Path:
    """Compile the torch-free kernels in ``header`` for ``isa`` to an object file in ``out_dir`` without
    loading it (any CPU; seconds, as no torch header is parsed): every register block of its ``BLOCKS`` table is
    instantiated and emitted. Raises ``NativeKernelError`` with the compiler's last lines."""
    import subprocess

    out_dir = Path(out_dir)
    driver = out_dir / f"{header.stem}_{isa.name}_check.cpp"
    driver.write_text(f'#include "{header.resolve()}"\nextern "C" const void* lnx_blocks() {{ return lnx::BLOCKS; }}\n')
    out = driver.with_suffix(".o")
    cmd = [os.environ.get("CXX", "c++"), "-c", str(driver), "-o", str(out), "-std=c++17", "-fPIC", *isa.flags]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise NativeKernelError(f"compiling {header.name} for {isa.name} failed: {result.stderr[-2000:]}")
    return out


def _build(source: Path, prefix: str, flags: tuple[str, ...], machine_key: str, *, owner: str, fallback: str
           ) -> ModuleType | None:
    name = _module_name(source, prefix, flags, machine_key)
    built = _import_built(name)  # built before (`lilnetx build-kernels`): no compiler needed
    if built is not None:
        return built
    if not shutil.which(os.environ.get("CXX", "c++")):
        warnings.warn(f"{owner}: no C++ compiler found (install g++); {fallback}", stacklevel=3)
        return None
    _remove_stale_lock(name)
    try:
        return cpp_extension_load()(name, [str(source)], extra_cflags=list(flags), extra_ldflags=["-fopenmp"],
                                    verbose=False)
    except Exception as exc:  # compiler or ninja problems: stay correct on the fallback path
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        warnings.warn(f"{owner}: building the C++ kernel failed ({type(exc).__name__}: {detail}); {fallback}",
                      stacklevel=3)
        return None


def _build_folder(name: str) -> Path:
    return Path(_cpp_extension()._get_build_directory(name, verbose=False))


def _import_built(name: str) -> ModuleType | None:
    """The extension ``name`` if it is already compiled, imported directly: torch's loader would first take its
    build folder's lock file, which a process killed while holding it leaves behind for ever."""
    import importlib.util

    import torch  # noqa: F401  (the extension links against libtorch, loaded by importing torch)

    path = _build_folder(name) / f"{name}.so"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _remove_stale_lock(name: str) -> None:
    """Remove a build lock older than :data:`STALE_LOCK_S` (a build takes minutes; an older lock was left by a
    killed process and would make every later build wait for ever)."""
    lock = _build_folder(name) / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
    except OSError:
        pass


def _module_name(source: Path, prefix: str, flags: tuple[str, ...], machine_key: str) -> str:
    """A name that changes with the source, the local headers it includes, torch, the machine key and flags."""
    import torch

    text = source.read_text()
    headers = [(source.parent / name).read_text() for name in re.findall(r'^#include "([^"]+)"', text, re.M)]
    key = hashlib.sha256("\n".join((text, *headers, torch.__version__, machine_key, " ".join(flags))).encode())
    return f"{prefix}_{key.hexdigest()[:12]}"


def cpp_extension_load() -> Any:
    """``torch.utils.cpp_extension.load`` (see :func:`_cpp_extension`)."""
    return _cpp_extension().load


def _cpp_extension() -> Any:
    """``torch.utils.cpp_extension``, imported without its "No CUDA runtime is found" warning (the kernels are
    CPU-only; on CPU builds of torch that warning is noise)."""
    ext_log = logging.getLogger("torch.utils.cpp_extension")
    level = ext_log.level
    ext_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        ext_log.setLevel(level)
    return cpp_extension


def build_kernels() -> dict[str, str]:
    """Compile (or find compiled) every kernel this CPU uses, two at a time: ``{name: "ready" | "failed"}``."""
    from concurrent.futures import ThreadPoolExecutor

    from lilnetx import fused, kernels

    jobs = {f"inference kernels ({kernels.kernel_isa().name})": kernels.load_extension,
            "fused training terms": fused.load_extension}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(load) for name, load in jobs.items()}
    return {name: "ready" if future.result() is not None else "failed" for name, future in futures.items()}
