"""What to do when an attempt failed before anything reached the client.

The rule: a request whose whole request the proxy still has (no body, or a buffered one) or
can still have (a streamed body not begun: it is still with the client) is never failed
because a backend died. It is sent again to whatever is current, and when
nothing has changed yet it waits for the routing to change rather than spinning:

- the routing changed since the attempt (a switch, the fallback, a hold): retry at once;
- a pooled connection turned out dead (the keep-alive race) and the method is idempotent:
  retry at once on a fresh connection, once per generation;
- otherwise wait a moment (``GRACE``) for the routing to change: a child that exits makes
  its connections fail a moment before the supervisor reports the exit;
- still unchanged: a refused connect means the backend is not there; so does a refused
  probe after a connection closed without an answer. Then the request is *held* (parked,
  no worker) until the routing changes or for another try after a growing back-off;
- a backend that accepts connections but closed this one without answering is alive and
  misbehaving: an idempotent request is resent once, a POST is never resent to it; 502.

Everything is bounded by the request's deadline (``hold_seconds`` after its first failure
or hold). Timeouts are never retried (504). A request whose body was being streamed from the
client cannot be replayed once streaming began: 502, as an attempt that lost its body.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from trayupdater.proxy.holding import HoldRoom
from trayupdater.proxy.observer import ERR_CONNECT, ERR_STALE, ERR_TIMEOUT
from trayupdater.proxy.plan import Plan
from trayupdater.proxy.routing import Generation, Router

GRACE = 0.02  # covers the gap between a backend's death and the news of it
PROBE_TIMEOUT = 1.0  # is a backend that closed a connection without answering still there?


class AttemptFailed(Exception):
    """An attempt failed before any byte reached the client."""

    def __init__(self, kind: str, status: int, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind  # an ERR_* constant
        self.status = status  # the answer if it is not retried
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Step:
    """The decision: ``retry`` now, else hold it (``hold``), else answer ``status``."""

    retry: bool = False
    hold: bool = False
    status: int = 502
    backoff: bool = False  # held for an unreachable backend: also try again after a while


RETRY = Step(retry=True)


class RetryPolicy:
    def __init__(self, router: Router, room: HoldRoom) -> None:
        self._router = router
        self._room = room

    def decide(self, plan: Plan, gen: Generation, failure: AttemptFailed) -> Step:
        kind = failure.kind
        if kind == ERR_TIMEOUT:
            return Step(status=failure.status)
        now = time.monotonic()
        deadline = self._room.deadline(plan, now)
        changed = self._router.generation is not gen
        # A streamed body not yet begun is still all with the client: it is held like a
        # buffered one (it waits in the client's socket), never failed for a restart.
        replayable = plan.replayable
        if gen.backend is None:  # nothing to try: wait for one if one is coming
            if now >= deadline or not replayable:
                return Step(status=503)
            if changed:
                return RETRY
            return Step(hold=True, status=503) if gen.holding else Step(status=503)
        if now >= deadline or not replayable:
            return Step(status=failure.status)
        if changed:
            return RETRY
        first_on_gen = plan.retried_on is not gen
        if first_on_gen and ((kind == ERR_STALE and plan.idempotent) or not plan.buffered):
            plan.retried_on = gen  # the keep-alive race; or a streamed body: one more try
            return RETRY
        if not plan.graced:
            plan.graced = True
            if self._router.wait_change(gen, min(GRACE, deadline - now)):
                return RETRY
        if kind == ERR_CONNECT:
            return Step(hold=True, status=502, backoff=True)
        if plan.idempotent and first_on_gen:
            plan.retried_on = gen
            return RETRY
        if not _reachable(gen):
            return Step(hold=True, status=502, backoff=True)
        return Step(status=failure.status)


def _reachable(gen: Generation) -> bool:
    """Does the backend still accept connections? (It closed one without an answer.)"""
    backend = gen.backend
    if backend is None:
        return False
    try:
        socket.create_connection((backend.host, backend.port), PROBE_TIMEOUT).close()
    except TimeoutError:
        return True  # there, but too busy to accept: not dead
    except OSError:
        return False
    return True
