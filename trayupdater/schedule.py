"""When to check again after a failed check: exponential back-off up to the check interval.

An app started before the network is up (a login start on a laptop) must not wait a whole
``check_interval`` (an hour by default) for its next try: the first retry comes after
``first_retry`` seconds (30 by default), each further failure doubles the wait, and the
wait never exceeds ``check_interval``. A success resets the count. Jitter (±10%) keeps many
installs that lost the same network from retrying in step.
"""

from __future__ import annotations

import random

FIRST_RETRY = 30.0
JITTER = 0.1


def retry_delay(failures: int, interval: float, first: float = FIRST_RETRY) -> float:
    """Seconds to wait after the ``failures``-th failed check in a row (1 = the first)."""
    if failures < 1:
        return interval
    # min() before the power would overflow: 2.0**2000 is inf, 2**2000 * 30 is a huge int.
    steps = min(failures - 1, 64)
    delay = min(interval, first * 2.0**steps)
    return delay * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - spreading, not secrecy
