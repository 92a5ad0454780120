"""The process's C allocator, set for training: freed tensor memory is kept for the next step (glibc only).

A training step frees and allocates the same large tensors (activations, gradients, decoded weights) every
step. By default glibc serves blocks above its adaptive threshold with fresh ``mmap`` pages and hands the heap's
free top back to the OS, so each step touches fresh pages again; every first touch is a page fault (about 1 µs
here; LeNet5-Caffe's steps took thousands each). :func:`keep_freed_memory` has blocks up to 32 MiB come from
the heap and keeps up to 1 GiB of free heap top: the next step reuses them without faults. It is
process-wide, as the ``GLIBC_TUNABLES`` / ``MALLOC_*_`` environment variables it equals, and the price is that
memory freed after a step is not returned to the OS until the process ends. ``Trainer`` calls it;
``LILNETX_MALLOC=default`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

ENV_SWITCH = "LILNETX_MALLOC"  # "default": leave the C allocator as it is
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest (its adaptive threshold's ceiling on 64-bit)
TRIM_THRESHOLD = 2**30


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's ``mmap`` threshold to 32 MiB and its trim threshold to 1 GiB (once per process); ``True``
    where applied, ``False`` where the C library is not glibc or ``LILNETX_MALLOC=default``."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
