"""HTTP/1.1 message heads and body framing for the reverse proxy (RFC 9112).

Hand-written rather than ``http.client``/``http.server`` because the proxy needs three things
those do not give at once: strict parsing that refuses ambiguous framing (request smuggling),
bodies streamed in both directions without buffering, and low per-request overhead.

Heads are parsed into latin-1 ``str`` (HTTP field values are octets; latin-1 round-trips
them exactly). Chunked bodies are decoded from a :class:`BufferedSocket`'s buffer by code that
reads nothing itself (the proxy waits for the bytes its own way). The proxy tells "backend
died" from "client went away" by :class:`SourceError` (the side being read failed, or sent
something malformed) and :class:`SinkError` (the side being written failed).
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from enum import Enum

RECV_SIZE = 64 * 1024
MAX_CHUNK_LINE = 4096  # chunk-size line including extensions

# RFC 9110 token characters: method names and header field names.
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rf"({_TCHARS}) ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)")
_STATUS_LINE = re.compile(r"HTTP/(\d)\.(\d) (\d{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
# A field line: name, colon (no whitespace before it: that is a smuggling vector), value
# without controls except tab (no CR, LF or NUL). Every pattern here is linear in its input:
# no two adjacent parts can match the same character, so nothing backtracks. (A lazy value
# followed by optional whitespace was quadratic: 64 KB of spaces cost seconds of CPU.)
_VALUE_CHARS = r"[^\x00-\x08\x0a-\x1f\x7f]*"
_FIELD_LINE = re.compile(rf"{_TCHARS}:{_VALUE_CHARS}")
_FIELD_BLOCK = re.compile(rf"(?:{_TCHARS}:{_VALUE_CHARS}\r\n)*")
_OWS = " \t"  # optional whitespace around a field value (RFC 9110 5.6.3)
_HEX = re.compile(r"[0-9A-Fa-f]{1,16}")

# Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the framing
# headers the proxy always writes itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
# Never dropped because a peer named them in Connection: Host routes the request, and the
# X-Forwarded-* headers are rewritten by the proxy anyway (naming them must not strip the
# client address the proxy adds).
_PROTECTED = frozenset({"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})


class HttpError(Exception):
    """A message the proxy refuses; ``status`` is the response to send before closing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SourceError(Exception):
    """Reading a body failed: the peer closed early, reset, timed out or sent bad framing."""


class SinkError(Exception):
    """Writing a body to the other side failed (peer gone or not reading)."""


class Framing(Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"  # responses only: body ends when the server closes


@dataclass(slots=True)
class Head:
    """One parsed request or response head."""

    start: tuple[str, str, str]  # (method, target, version) or (version, status, reason)
    minor: int  # HTTP/1.<minor>
    fields: list[tuple[str, str]]  # in order, original names
    index: dict[str, list[str]] = field(default_factory=dict)  # lower-case name -> values
    # Connection tokens, worked out on first use: a request asks for them up to five times.
    _connection: frozenset[str] | None = field(default=None, repr=False, compare=False)

    def get(self, name: str) -> str | None:
        values = self.index.get(name)
        return values[0] if values else None

    def tokens(self, name: str) -> list[str]:
        """Comma-separated list values of every field ``name``, lower-cased, empties dropped."""
        out: list[str] = []
        values = self.index.get(name)
        if values is None:
            return out
        for value in values:
            out.extend(t for t in (p.strip().lower() for p in value.split(",")) if t)
        return out

    def connection_tokens(self) -> frozenset[str]:
        tokens = self._connection
        if tokens is None:
            tokens = self._connection = frozenset(self.tokens("connection"))
        return tokens

    def keep_alive(self) -> bool:
        """Does the sender of this head want the connection kept open (RFC 9112 9.3)?"""
        tokens = self.connection_tokens()
        if "close" in tokens:
            return False
        return self.minor >= 1 or "keep-alive" in tokens


def _explain(lines: list[str], error_status: int) -> HttpError:
    """The precise error for a field block that failed validation (slow path only)."""
    for line in lines:
        if not line:
            continue
        if line[0] in " \t":
            # obs-fold: deprecated and a classic way to make two parsers disagree.
            return HttpError(error_status, "folded header line (obs-fold)")
        if "\r" in line or "\n" in line:
            return HttpError(error_status, "bare CR or LF in message head")
        if _FIELD_LINE.fullmatch(line) is None:
            return HttpError(error_status, f"malformed header line {line[:60]!r}")
    return HttpError(error_status, "malformed message head")


def _split(raw: bytes, start_line: re.Pattern[str], error_status: int, what: str) -> Head:
    """Parse ``raw`` (a whole head ending in CRLF CRLF) with ``start_line`` for line one."""
    text = raw.decode("latin-1")
    first_end = text.find("\r\n")
    match = start_line.fullmatch(text, 0, first_end) if first_end > 0 else None
    if match is None:
        raise HttpError(error_status, f"malformed {what} {text[: min(first_end, 80)]!r}")
    # Everything after the start line, without the final empty line: zero or more fields.
    # One C-level pass validates it all (controls, bare CR/LF, obs-fold, space before colon).
    block = text[first_end + 2 : -2]
    if not _FIELD_BLOCK.fullmatch(block):
        raise _explain(block.split("\r\n"), error_status)
    # Validated: every line is "name:value" and the name holds no colon. Plain string
    # operations from here, linear in the head size (and faster than a capturing regex).
    lines = block.split("\r\n")
    lines.pop()  # the block ends in CRLF: an empty last item
    fields: list[tuple[str, str]] = []
    index: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        value = value.strip(_OWS)
        fields.append((name, value))
        key = name.lower()
        if key in index:
            index[key].append(value)
        else:
            index[key] = [value]
    return Head(match.groups(), 0, fields, index)


def parse_request_head(raw: bytes) -> Head:
    """Parse a request head ending in CRLF CRLF; raises :class:`HttpError` (400/505)."""
    head = _split(raw.lstrip(b"\r\n"), _REQUEST_LINE, 400, "request line")
    method, target, major, minor = head.start  # type: ignore[misc]
    if major != "1":
        raise HttpError(505, f"HTTP version {major}.{minor} not supported")
    head.start = (method, target, f"HTTP/1.{minor}")
    head.minor = int(minor)
    return head


def parse_response_head(raw: bytes) -> Head:
    """Parse a response head ending in CRLF CRLF; raises :class:`HttpError` (502)."""
    head = _split(raw, _STATUS_LINE, 502, "status line from the backend")
    major, minor, status, reason = head.start  # type: ignore[misc]
    if major != "1":
        raise HttpError(502, f"backend answered HTTP/{major}.{minor}")
    if not "100" <= status <= "599":  # three digits: compared as text
        raise HttpError(502, f"backend answered status {status}, outside 100-599")
    head.start = (f"HTTP/1.{minor}", status, reason or "")
    head.minor = int(minor)
    return head


def content_length(head: Head, error_status: int) -> int | None:
    """The single Content-Length of ``head``; differing or non-digit values are an error."""
    values = head.index.get("content-length")
    if values is None:
        return None
    if len(values) == 1 and values[0].isdigit() and values[0].isascii() and len(values[0]) < 19:
        return int(values[0])  # the usual case
    seen = {part.strip() for value in values for part in value.split(",")}
    if len(seen) != 1:
        raise HttpError(error_status, "conflicting Content-Length values")
    text = seen.pop()
    # int() would accept "+5", " 5", "5_0" and unicode digits: only ASCII digits are valid.
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise HttpError(error_status, f"invalid Content-Length {text[:20]!r}")
    return int(text)


def request_framing(head: Head) -> tuple[Framing, int]:
    """How the request body is delimited; rejects ambiguous framing (RFC 9112 6.1-6.3)."""
    codings = head.tokens("transfer-encoding")
    if "transfer-encoding" in head.index:
        if "content-length" in head.index:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        if head.minor == 0:
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if not codings:
            raise HttpError(400, "empty Transfer-Encoding")
        if codings != ["chunked"]:
            if codings[-1] != "chunked" or codings.count("chunked") > 1:
                raise HttpError(400, "chunked is not the final transfer coding")
            raise HttpError(501, f"transfer coding {codings[0]!r} not implemented")
        return Framing.CHUNKED, 0
    length = content_length(head, 400)
    if length:
        return Framing.LENGTH, length
    return Framing.NONE, 0


def response_framing(head: Head, request_method: str) -> tuple[Framing, int, bool]:
    """Body framing of a response and whether its connection can be reused afterwards."""
    status = int(head.start[1])
    reusable = head.keep_alive()
    if request_method == "HEAD" or status in (204, 304) or status < 200:
        # A head that announces a body (legal for HEAD and 304) may be followed by one
        # anyway (``do_HEAD = do_GET``): the connection then holds bytes of no request.
        # Every Content-Length field counts: "0" then "38" announces 38 bytes too.
        announced = "transfer-encoding" in head.index or any(
            value != "0" for value in head.index.get("content-length", ())
        )
        return Framing.NONE, 0, reusable and not announced
    if "transfer-encoding" in head.index:
        codings = head.tokens("transfer-encoding")
        if codings != ["chunked"]:
            # Transfer-Encoding is hop-by-hop: the client would get gzip (or any other
            # coding) as the body itself. Requests with such codings get 501 likewise.
            raise HttpError(502, f"transfer coding {', '.join(codings)[:60]!r} not supported")
        # With both headers the message is suspect: use the chunking, never reuse the socket.
        reusable = reusable and "content-length" not in head.index
        return Framing.CHUNKED, 0, reusable
    length = content_length(head, 502)
    if length is None:
        return Framing.UNTIL_CLOSE, 0, False
    return Framing.LENGTH, length, reusable


def forwarded_fields(head: Head, extra_drop: frozenset[str] = frozenset()) -> list[str]:
    """``Name: value\\r\\n`` lines of ``head`` minus hop-by-hop fields and those in Connection."""
    drop = HOP_BY_HOP | extra_drop
    named = head.connection_tokens() - _PROTECTED
    out = []
    for name, value in head.fields:
        lower = name.lower()
        if "_" in lower:
            # CGI, WSGI and PHP read "_" as "-" (HTTP_TRANSFER_ENCODING): a field they would
            # take for one the proxy writes or drops, or for Host, goes too (as nginx does).
            lower = lower.replace("_", "-")
            if lower in _PROTECTED:
                continue
        if lower in drop or lower in named or lower.startswith("proxy-"):
            continue
        out.append(f"{name}: {value}\r\n")
    return out


class BufferedSocket:
    """A socket plus the bytes read from it but not consumed yet."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def fill(self) -> bool:
        """Read what is available (blocking up to the socket timeout); False on EOF."""
        data = self.sock.recv(RECV_SIZE)
        if not data:
            return False
        self.buf += data
        return True

    def read_head(self, limit: int, *, too_big: int) -> bytes | None:
        """Bytes of the next head including CRLF CRLF; None on EOF before any byte.

        Raises HttpError(``too_big``) past ``limit`` bytes and SourceError on EOF mid-head.
        """
        start = 0
        while True:
            end = self.buf.find(b"\r\n\r\n", start)
            if end >= 0:
                if end + 4 > limit:
                    raise HttpError(too_big, f"message head larger than {limit} bytes")
                head = bytes(self.buf[: end + 4])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > limit:
                raise HttpError(too_big, f"message head larger than {limit} bytes")
            start = max(0, len(self.buf) - 3)
            had = bool(self.buf)
            if not self.fill():
                if had:
                    raise SourceError("connection closed in the middle of a message head")
                return None


_local = threading.local()


def scratch() -> memoryview:
    """This thread's reused 64 KiB read buffer."""
    view: memoryview | None = getattr(_local, "scratch", None)
    if view is None:
        # 64 KiB: what one recv on loopback gives anyway, and little RSS kept per thread.
        view = _local.scratch = memoryview(bytearray(RECV_SIZE))
    return view


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions ignored); SourceError if it is not hex."""
    size_text = line.split(b";", 1)[0].strip(b" \t").decode("latin-1")
    if not _HEX.fullmatch(size_text):
        raise SourceError(f"invalid chunk size {size_text[:20]!r}")
    return int(size_text, 16)


def scan_chunked(
    buf: bytearray, pos: int, max_trailer_bytes: int, max_chunks: int
) -> tuple[int, bool, int]:
    """Walk the complete chunks of a chunked body in ``buf`` from offset ``pos``, reading
    nothing: returns (offset to resume from, whether the whole body is there, chunks
    walked). It stops after ``max_chunks`` chunks, body complete or not.

    For a body received piece by piece without a thread waiting on it; the decoding itself
    is :func:`decode_in_hand`'s, once this says the body is complete. SourceError if malformed.
    The bound is the caller's budget: every chunk costs a few microseconds of Python, and a
    megabyte of one-byte chunks is 170,000 of them.
    """
    walked = 0
    while walked < max_chunks:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            if len(buf) - pos > MAX_CHUNK_LINE:
                raise SourceError(f"chunk line longer than {MAX_CHUNK_LINE} bytes")
            return pos, False, walked
        size = chunk_size(bytes(buf[pos:end]))
        if size == 0:
            # Trailer lines up to an empty one; rescanned from the last chunk until complete.
            # Each counts against the budget, as a chunk does: 64 KiB of 3-byte lines,
            # rescanned at every read of a trickle, would otherwise cost milliseconds each.
            start = end + 2
            while True:
                line_end = buf.find(b"\r\n", start)
                if line_end < 0:
                    if len(buf) - end > max_trailer_bytes:
                        raise SourceError("oversized trailer section")
                    return pos, False, walked
                if line_end == start:
                    return pos, True, walked  # resuming from the last chunk finds the end
                start = line_end + 2
                walked += 1
                if walked >= max_chunks:
                    return pos, False, walked
        data_end = end + 2 + size
        if len(buf) < data_end + 2:
            return pos, False, walked
        if buf[data_end : data_end + 2] != b"\r\n":
            raise SourceError("chunk data not followed by CRLF")
        pos = data_end + 2
        walked += 1
    return pos, False, walked


# What decode_chunked yields: a piece of chunk data, or None when it needs more bytes.
Pieces = Generator[bytes | None, None, list[str]]


def decode_chunked(src: BufferedSocket, max_trailer_bytes: int) -> Pieces:
    """Decode a chunked body from ``src.buf`` as it arrives: yields each piece of chunk
    data, and None whenever it needs more bytes in ``src.buf`` (the caller reads them, and
    stops if there are none: the body is cut short); returns the trailer lines.

    Reads nothing itself, so the caller decides how to wait for the bytes (none: only what
    is in hand, :func:`decode_in_hand`; as steps, without a thread: ``proxy.streams``). The caller
    re-frames (or not) what it passes on, so a malformed chunk stream never reaches the
    other side verbatim. SourceError if malformed.
    """
    while True:
        size = chunk_size((yield from _line(src, MAX_CHUNK_LINE)))
        if size == 0:
            break
        while size:
            buf = src.buf
            if not buf:
                yield None
                continue
            take = min(size, len(buf))
            piece = bytes(buf[:take])
            del buf[:take]
            size -= take
            yield piece
        while len(src.buf) < 2:
            yield None
        if src.buf[:2] != b"\r\n":
            raise SourceError("chunk data not followed by CRLF")
        del src.buf[:2]
    trailers: list[str] = []
    total = 0
    while True:
        line = yield from _line(src, max_trailer_bytes)
        if not line:
            return trailers
        total += len(line) + 2
        text = line.decode("latin-1")
        if total > max_trailer_bytes or text[0] in _OWS or not _FIELD_LINE.fullmatch(text):
            raise SourceError("malformed or oversized trailer section")
        trailers.append(text)


def _line(src: BufferedSocket, limit: int) -> Generator[None, None, bytes]:
    """One CRLF-terminated line of a chunked body without the CRLF (a chunk size, a trailer),
    yielding None while more bytes are needed."""
    start = 0
    while True:
        buf = src.buf
        end = buf.find(b"\r\n", start)
        if end >= 0:
            line = bytes(buf[:end])
            del buf[: end + 2]
            return line
        if len(buf) > limit:
            raise SourceError(f"line longer than {limit} bytes in chunked body")
        start = max(0, len(buf) - 1)
        yield None


def decode_in_hand(src: BufferedSocket, max_trailer_bytes: int) -> tuple[bytes, list[str]] | None:
    """The chunked body at the front of ``src.buf``, if it is all there: its data and
    trailer lines, taken from ``src.buf``. None, taking nothing, if more must come;
    SourceError if malformed. Decoded from a copy, which reads nothing: a refusal leaves
    ``src.buf`` as it was."""
    probe = BufferedSocket(src.sock)
    probe.buf = bytearray(src.buf)
    pieces = decode_chunked(probe, max_trailer_bytes)
    parts: list[bytes] = []
    while True:
        try:
            piece = next(pieces)
        except StopIteration as end:
            trailers: list[str] = end.value
            break
        if piece is None:
            return None
        parts.append(piece)
    del src.buf[: len(src.buf) - len(probe.buf)]
    return b"".join(parts), trailers


def chunk(data: bytes | bytearray | memoryview) -> bytes:
    """One chunk in chunked transfer coding."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def rechunked(data: bytes, trailers: list[str]) -> bytes:
    """A decoded chunked body framed again: one chunk with all of ``data`` (none if it is
    empty), then the last chunk with ``trailers``."""
    return (chunk(data) if data else b"") + last_chunk(trailers)


def last_chunk(trailers: list[str]) -> bytes:
    """The terminating zero chunk, with trailer fields minus hop-by-hop and framing ones."""
    kept = [t for t in trailers if t.split(":", 1)[0].strip().lower() not in HOP_BY_HOP]
    return ("0\r\n" + "".join(f"{t}\r\n" for t in kept) + "\r\n").encode("latin-1")
