"""One request between its head and its answer, kept whole while it may still be replayed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from trayupdater.http11 import Framing, Head

if TYPE_CHECKING:
    from trayupdater.proxy.routing import Generation

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(slots=True)
class Plan:
    """A parsed request as it will be sent upstream.

    It lives on the client connection while the dispatcher receives its body, and is what is
    sent (again, for a retry) once the body is in hand.
    """

    req: Head
    head: str  # upstream request head without the final CRLF
    framing: Framing
    length: int  # Content-Length, when framing is LENGTH
    started: float  # when its head was complete (monotonic)
    body: bytes = b""  # the whole body, framed for upstream, once buffered
    buffered: bool = False  # True when ``body`` is the whole body (or there is none)
    stream: bool = False  # the body is too large to buffer: a worker streams it
    continue_sent: bool = False  # "100 Continue" went to the client already
    body_started: float = 0.0  # when the proxy began waiting for the body
    accounted: int = 0  # bytes of it counted in the buffered-bodies budget
    chunk_scan: int = 0  # chunked: offset in the client buffer of the next chunk line
    chunks: int = 0  # chunked: complete chunks walked so far (steps.DISPATCHER_CHUNKS)
    # Retries and holds (see retry.py and holding.py).
    deadline: float = 0.0  # no retry or hold past this (set at the first failure or hold)
    retried_on: Generation | None = None  # the generation it was already resent to once
    graced: bool = False  # it already waited a moment for the routing to change
    hold_gen: Generation | None = None  # held until the current generation is another one
    hold_status: int = 503  # the answer if the hold expires
    retry_at: float = 0.0  # held for an unreachable backend: try it again then (0: never)
    holds: int = 0  # times held for an unreachable backend (the back-off grows)
    # The failed attempt that sent it to a hold (kind, backend, detail): a retry after it.
    failure: tuple[str, str, str] | None = None
    held_at: float = 0.0  # when the current hold began
    held_seconds: float = 0.0  # time held so far, all holds together
    held_size: int = 0  # bytes it counts for in the hold room
    ever_held: bool = False
    consumed: bool = False  # streaming of the body from the client began: never replayed
    answered: bool = False  # a backend's response head arrived

    def __post_init__(self) -> None:
        self.buffered = self.framing is Framing.NONE

    @property
    def method(self) -> str:
        return self.req.start[0]

    @property
    def replayable(self) -> bool:
        """Can it be sent (again) whole: its body is in hand, or still all with the client
        (a streamed body of which nothing was read for a backend yet)?"""
        return self.buffered or not self.consumed

    @property
    def idempotent(self) -> bool:
        return self.req.start[0] in IDEMPOTENT
