"""One request between its head and its answer, kept whole while it may still be replayed."""

from __future__ import annotations

from dataclasses import dataclass

from trayupdater.http11 import Framing, Head


@dataclass(slots=True)
class Plan:
    """A parsed request as it will be sent upstream.

    It lives on the client connection while the parker receives its body, and is what a
    worker sends (again, for a retry) once the body is in hand.
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

    def __post_init__(self) -> None:
        self.buffered = self.framing is Framing.NONE

    @property
    def method(self) -> str:
        return self.req.start[0]
