"""Held requests: parked with their whole request until the routing changes.

A request is held when there is no backend but one is coming (:meth:`ReverseProxy.hold`, or
the current backend died without a warm fallback), or when its backend cannot be reached
and the proxy has not yet been told why. Held requests cost no worker: the client connection
sits in the parker with the request kept for replay, the parker watches it (a client that
goes away is forgotten at once), and gives it back to the workers when the current
generation changes, or when it is time to try an unreachable backend again. A hold ends at
the request's deadline (``hold_seconds`` after it was first held or failed) with 503 and
Retry-After (502 for a backend that stayed unreachable). The room is bounded in requests and
bytes; past either bound a request gets 503 and Retry-After at once.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from trayupdater.proxy.plan import Plan

if TYPE_CHECKING:
    from trayupdater.proxy.clients import Client
    from trayupdater.proxy.routing import Generation

RETRY_BACKOFF_FIRST = 0.05  # an unreachable backend is tried again after this, doubling
RETRY_BACKOFF_MAX = 1.0


class HoldRoom:
    """How many requests are held, how many bytes they keep, and the limits on both."""

    def __init__(self, hold_seconds: float, max_held: int, max_held_bytes: int) -> None:
        self.hold_seconds = hold_seconds
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        return self._bytes

    def deadline(self, plan: Plan, now: float) -> float:
        """The request's retry-and-hold deadline, set the first time it is asked for."""
        if not plan.deadline:
            plan.deadline = now + self.hold_seconds
        return plan.deadline

    def admit(self, conn: Client, plan: Plan, gen: Generation, *, status: int, retry: bool) -> bool:
        """Hold ``plan`` until the current generation is no longer ``gen`` (and, with
        ``retry``, until the next try of an unreachable backend); False when full."""
        size = len(plan.head) + len(plan.body) + len(conn.buf)
        with self._lock:
            if self._count >= self.max_held or self._bytes + size > self.max_held_bytes:
                return False
            self._count += 1
            self._bytes += size
        now = time.monotonic()
        plan.held_size = size
        plan.hold_gen = gen
        plan.hold_status = status
        plan.held_at = now
        plan.ever_held = True
        plan.retry_at = 0.0
        if retry:
            delay = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_FIRST * 2**plan.holds)
            plan.retry_at = now + delay
            plan.holds += 1
        deadline = self.deadline(plan, now)
        conn.pending = plan
        conn.held = True
        conn.deadline = min(deadline, plan.retry_at) if plan.retry_at else deadline
        return True

    def leave(self, conn: Client) -> Plan:
        """``conn`` is held no more (released, expired or gone); its plan."""
        plan = conn.pending
        assert plan is not None and conn.held
        conn.held = False
        plan.hold_gen = None
        plan.held_seconds += time.monotonic() - plan.held_at
        with self._lock:
            self._count -= 1
            self._bytes -= plan.held_size
        return plan
