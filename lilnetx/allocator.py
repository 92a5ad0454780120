"""The process's C allocator, set for training: freed tensor memory is kept for the next step (glibc only).

A training step frees and allocates the same large tensors (activations, gradients, decoded weights) every
step. By default glibc serves blocks above its adaptive threshold with fresh ``mmap`` pages and hands the heap's
free top back to the OS, so each step touches fresh pages again; every first touch is a page fault (about 1 µs
here; LeNet5-Caffe's steps took thousands each). :func:`keep_freed_memory` has blocks up to 32 MiB come from
the heap and keeps up to 1 GiB of free heap top: the next step reuses them without faults. It is
process-wide, as the ``GLIBC_TUNABLES`` / ``MALLOC_*_`` environment variables it equals, and the price is that
memory freed after a step is not returned to the OS until the process ends (the setting stays after the
``Trainer`` is done). ``Trainer`` calls it; ``LILNETX_MALLOC=default`` leaves the allocator alone, and so does a
process whose environment already sets glibc's malloc tunables (``GLIBC_TUNABLES``, ``MALLOC_*_``). Under a
preloaded allocator (jemalloc, tcmalloc) ``mallopt`` is glibc's and changes nothing.
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
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's ``mmap`` threshold to 32 MiB and its trim threshold to 1 GiB (once per process); ``True``
    where applied, ``False`` where the C library is not glibc, ``LILNETX_MALLOC=default`` or the environment sets
    glibc's malloc tunables itself."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() == "default" or any(map(os.environ.get, USER_SETTINGS)):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    return all(result == 1 for result in applied)  # both tried: a refusal of one leaves the other set
