"""One malloc arena for the whole app (glibc), so a burst of traffic leaves no RSS behind.

glibc gives threads that allocate at the same moment arenas of their own, up to eight per
core, and an arena keeps the memory it once held. The proxy's workers receive into 64 KiB
buffers; after a burst of concurrent large responses each of a dozen arenas keeps a few
hundred KiB: 4-5 MiB of an idle app's RSS (44.5 MiB after the proxy benchmark's load, 40.1
with one arena). The GIL serialises the app's allocations anyway: with one arena the same
load ran at the same requests/s.

``MALLOC_ARENA_MAX=1`` in the environment does the same, but a user double-clicks the app:
nobody sets it. So the app sets it on itself with ``mallopt`` before its threads start.
And once the proxy is quiet, the heap's free pages go back to the OS (``malloc_trim``):
free() returns only the top of the heap. Elsewhere (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

M_ARENA_MAX = -8  # glibc's <malloc.h>


def _glibc(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """The C library function ``name`` (returning int), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def limit_malloc_arenas(count: int = 1) -> bool:
    """Cap glibc's malloc arenas at ``count``; True if it took effect."""
    import ctypes

    mallopt = _glibc("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and mallopt(M_ARENA_MAX, count) == 1


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim``); True if any were.

    free() returns memory to the OS only from the top of the heap; pages freed in its middle
    stay resident until this is called. Meant for a quiet moment: it walks the whole heap.
    The proxy calls it when it has been quiet for a few seconds (dispatcher.QUIET_SECONDS).
    """
    import ctypes

    malloc_trim = _glibc("malloc_trim", ctypes.c_size_t)
    return malloc_trim is not None and malloc_trim(0) == 1
