"""Giving freed host memory back to the operating system.

On the CPU, a tiled VAE pass allocates and frees region buffers of many sizes in every frame
chunk. glibc's allocator raises its mmap threshold as large blocks are freed, so later blocks of
those sizes come from the heap, and freed heap pages stay in the resident set: without help the
peak RSS of a long decode creeps up with the number of chunks. :func:`trim_host_heap` asks
glibc (``malloc_trim(0)``) to return every free page of the heap; where the C library has no
``malloc_trim`` (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Callable

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def trim_host_heap() -> bool:
    """Return the C heap's free pages to the OS; True when the C library could be asked."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


__all__ = ["trim_host_heap"]
