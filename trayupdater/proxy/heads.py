"""Message heads as the proxy sees them: parsed, checked and rewritten once, then remembered.

Parsing a head and writing the one that goes on costs more Python than the rest of a small
request. But a busy client sends the same head again and again, and a backend answers with
the same head until its ``Date`` changes a second later. Both functions here are pure (the
same bytes always give the same answer), so the answer for a recent head is looked up
instead of worked out again: a bounded LRU cache, for heads up to ``CACHE_HEAD_BYTES``. A
refused head raises every time (errors are not cached). What they return is shared between
threads: never change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from trayupdater import http11
from trayupdater.http11 import Framing, Head, HttpError

CACHE_HEAD_BYTES = 2048  # a browser's request head with a few cookies; bigger ones are rare
REQUEST_ENTRIES = 256  # the heads of a page's resources; at most 256 x 2 KiB of keys
# A response head is the same only until its Date changes: the last second's few are enough.
RESPONSE_ENTRIES = 32

# The proxy writes these itself in the upstream request.
_REQUEST_DROP = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "expect"})


@dataclass(frozen=True, slots=True)
class Inbound:
    """A request head the proxy accepted, and the head it sends upstream for it."""

    head: Head
    framing: Framing
    length: int  # Content-Length, when framing is LENGTH
    # The upstream head without its final CRLF is before_ip + the client's address + after_ip
    # (the address goes at the end of X-Forwarded-For).
    before_ip: str
    after_ip: str

    def upstream_head(self, client_ip: str) -> str:
        return f"{self.before_ip}{client_ip}{self.after_ip}"


def inbound(raw: bytes) -> Inbound:
    """Parse and check a request head (raises HttpError with the status to answer)."""
    if len(raw) <= CACHE_HEAD_BYTES:
        return _inbound_cached(raw)
    return _inbound(raw)


def _inbound(raw: bytes) -> Inbound:
    req = http11.parse_request_head(raw)
    framing, length = http11.request_framing(req)
    hosts = req.index.get("host")
    if hosts is None and req.minor >= 1:
        raise HttpError(400, "HTTP/1.1 request without Host")
    if hosts is not None and len(hosts) > 1:
        raise HttpError(400, "more than one Host header")
    method, target, _ = req.start
    if method == "CONNECT":
        raise HttpError(501, "CONNECT is not supported by a reverse proxy")
    expect = req.get("expect")
    if expect is not None and expect.strip().lower() != "100-continue":
        raise HttpError(417, f"unsupported expectation {expect[:40]!r}")
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    lines += http11.forwarded_fields(req, _REQUEST_DROP)
    prior = ", ".join(req.index.get("x-forwarded-for", ()))
    lines.append(f"X-Forwarded-For: {prior + ', ' if prior else ''}")
    before_ip = "".join(lines)
    lines = ["\r\nX-Forwarded-Proto: http\r\n"]
    host = req.get("host")
    if host is not None:
        lines.append(f"X-Forwarded-Host: {host}\r\n")
    if framing is Framing.LENGTH:
        lines.append(f"Content-Length: {length}\r\n")
    elif framing is Framing.CHUNKED:
        lines.append("Transfer-Encoding: chunked\r\n")
    elif "content-length" in req.index:
        lines.append("Content-Length: 0\r\n")
    upgrade = req.get("upgrade")
    if upgrade is not None and "upgrade" in req.connection_tokens() and req.minor >= 1:
        lines.append(f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\n")
    return Inbound(req, framing, length, before_ip, "".join(lines))


_inbound_cached = lru_cache(maxsize=REQUEST_ENTRIES)(_inbound)


@dataclass(slots=True)
class Outbound:
    """A backend's response head, its framing, and the heads that go to clients for it."""

    head: Head
    status: int
    framing: Framing | None  # None: the framing is invalid (``problem`` says why)
    length: int  # Content-Length, when framing is LENGTH
    reusable: bool  # the backend connection can carry another request after this response
    problem: str | None
    # (client's HTTP minor version, keep-alive) -> client_head(); filled on first use.
    _client_heads: dict[tuple[int, bool], tuple[bytes, bool, bool]] = field(
        default_factory=dict, repr=False
    )

    def client_head(self, minor: int, keep: bool) -> tuple[bytes, bool, bool]:
        """The head for a client speaking HTTP/1.``minor`` that may keep its connection
        (``keep``): (head, whether it is kept open after all, whether the body is re-chunked).
        """
        made = self._client_heads.get((minor, keep))
        if made is None:
            made = self._client_heads[minor, keep] = self._make_client_head(minor, keep)
        return made

    def _make_client_head(self, minor: int, keep: bool) -> tuple[bytes, bool, bool]:
        resp, framing = self.head, self.framing
        chunked_out = False
        lines = [f"HTTP/1.1 {self.status} {resp.start[2]}\r\n"]
        lines += http11.forwarded_fields(resp)
        if framing is Framing.LENGTH:
            lines.append(f"Content-Length: {self.length}\r\n")
        elif framing is Framing.NONE:
            # HEAD and 304 describe the body they do not carry: keep that length.
            try:
                declared = http11.content_length(resp, 502)
            except HttpError:
                declared = None
            if declared is not None and self.status != 204:
                lines.append(f"Content-Length: {declared}\r\n")
        elif minor >= 1:
            lines.append("Transfer-Encoding: chunked\r\n")
            chunked_out = True
        else:
            keep = False  # HTTP/1.0 client, unknown length: the close ends the body
        if not keep:
            lines.append("Connection: close\r\n")
        elif minor == 0:
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1"), keep, chunked_out


def outbound(raw: bytes, head_request: bool) -> Outbound:
    """Parse a response head to a request (a HEAD request when ``head_request``); raises
    HttpError when the head itself is malformed."""
    if len(raw) <= CACHE_HEAD_BYTES:
        return _outbound_cached(raw, head_request)
    return _outbound(raw, head_request)


def _outbound(raw: bytes, head_request: bool) -> Outbound:
    resp = http11.parse_response_head(raw)
    status = int(resp.start[1])
    try:
        framing, length, reusable = http11.response_framing(resp, "HEAD" if head_request else "")
    except HttpError as exc:
        return Outbound(resp, status, None, 0, False, str(exc))
    return Outbound(resp, status, framing, length, reusable, None)


_outbound_cached = lru_cache(maxsize=RESPONSE_ENTRIES)(_outbound)
