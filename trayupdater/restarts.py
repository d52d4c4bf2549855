"""When a dead child is started again, and when its crashes call for a rollback instead.

A child that exits outside probation is restarted after a back-off (:data:`BACKOFF`: half
a second, doubling to 30 s), which starts afresh once a child has run :data:`STABLE_AFTER`
seconds. Exits (and failed restarts) of one version are counted over
``crash_loop_seconds``: ``crash_loop_exits`` of them are a crash loop, and the caller
(:mod:`serving`) rolls back instead of restarting once more. An update or a rollback
starts the count afresh.
"""

from __future__ import annotations

from collections import deque

BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
STABLE_AFTER = 60.0  # a child up this long resets the back-off


class Restarts:
    """The back-off and the crash-loop window of the active version."""

    def __init__(self, crash_loop_exits: int, crash_loop_seconds: float) -> None:
        self._loop_exits = crash_loop_exits
        self._loop_seconds = crash_loop_seconds
        self._exits: deque[float] = deque()  # monotonic times within the window
        self._attempt = 0

    def crash_loop(self, now: float) -> int | None:
        """Count an exit; how many fell within the window when that makes a crash loop."""
        self._exits.append(now)
        while self._exits and self._exits[0] < now - self._loop_seconds:
            self._exits.popleft()
        return len(self._exits) if len(self._exits) >= self._loop_exits else None

    def delay(self, now: float, started_at: float | None = None) -> float:
        """Seconds to wait before the next start (``started_at``: when the child that just
        died had started; one that ran long enough starts the back-off afresh)."""
        if started_at is not None and now - started_at > STABLE_AFTER:
            self._attempt = 0
        delay = BACKOFF[min(self._attempt, len(BACKOFF) - 1)]
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """A new version runs (an update or a rollback): nothing counted so far applies."""
        self._exits.clear()
        self._attempt = 0
