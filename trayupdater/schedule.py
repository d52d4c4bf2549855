"""When to check for updates: the clock checks are scheduled on, and the retry back-off.

**The clock.** ``time.monotonic()`` stops while the computer sleeps, on Linux
(CLOCK_MONOTONIC), macOS (mach_absolute_time) and Windows (QueryPerformanceCounter), and so
does a wait with a timeout. A laptop closed for the night then checked an hour *of use*
after the last check, not an hour after it: with a daily interval, days late. Checks are
scheduled on :func:`since_boot`, which counts the time asleep, and the worker wakes at least
every :data:`MAX_NAP` seconds to look at it, so the check that fell due during the night
runs within a minute of opening the lid. (A child's probation and restart back-off stay on
``time.monotonic()``: they measure how long it ran.)

**After a failed check**, exponential back-off up to the check interval. An app started
before the network is up (a login start on a laptop) must not wait a whole
``check_interval`` (an hour by default) for its next try: the first retry comes after
``first_retry`` seconds (30 by default), each further failure doubles the wait, and the
wait never exceeds ``check_interval``. A success resets the count. Jitter (±10%) keeps many
installs that lost the same network from retrying in step.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

FIRST_RETRY = 30.0
JITTER = 0.1
MAX_NAP = 60.0  # seconds the update worker sleeps at most: a wait does not count sleep


def _clock_with_sleep() -> Callable[[], float]:
    if sys.platform.startswith("linux") and hasattr(time, "CLOCK_BOOTTIME"):
        return lambda: time.clock_gettime(time.CLOCK_BOOTTIME)
    if sys.platform == "darwin":
        # clock_gettime's CLOCK_MONOTONIC keeps counting asleep on macOS (not mach time).
        return lambda: time.clock_gettime(time.CLOCK_MONOTONIC)
    if sys.platform == "win32":
        import ctypes

        tick_count = ctypes.windll.kernel32.GetTickCount64  # type: ignore[attr-defined]
        tick_count.restype = ctypes.c_ulonglong
        return lambda: tick_count() / 1000.0  # milliseconds since boot, sleep included
    return time.monotonic  # elsewhere: the best there is


since_boot: Callable[[], float] = _clock_with_sleep()
"""Seconds since some fixed point, counting the time the computer spent asleep."""


def retry_delay(failures: int, interval: float, first: float = FIRST_RETRY) -> float:
    """Seconds to wait after the ``failures``-th failed check in a row (1 = the first)."""
    if failures < 1:
        return interval
    # min() before the power would overflow: 2.0**2000 is inf, 2**2000 * 30 is a huge int.
    steps = min(failures - 1, 64)
    delay = min(interval, first * 2.0**steps)
    return delay * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - spreading, not secrecy
