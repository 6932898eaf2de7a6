"""glibc's malloc tuned for a process through mallopt(3). Elsewhere than glibc nothing is changed."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt's parameters (glibc's malloc.h)


def mallopt(settings: Mapping[int, int], libc: Any = None) -> bool:
    """Set each parameter to its value, in order; False where the C library has no mallopt (not glibc) or
    refuses a value. `libc`: the library to call (the process's own by default)."""
    call = _function("mallopt", libc)
    return call is not None and all([bool(call(param, value)) for param, value in settings.items()])


def give_back(libc: Any = None) -> bool:
    """Return the heap's free pages to the kernel (malloc_trim(3)). Start-up frees much of what importing and
    building the daemon allocated; glibc keeps those pages until asked. False where there is no malloc_trim."""
    call = _function("malloc_trim", libc)
    return call is not None and bool(call(0))


def _function(name: str, libc: Any) -> Any:
    try:
        return getattr(libc if libc is not None else ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):
        return None
