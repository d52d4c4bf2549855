"""Property: the proxy passes on each backend response exactly as a strict HTTP/1.1 client
reads it, or refuses it; a response never bleeds into another.

The response direction of ``test_proxy_framing_properties`` (a differential test, the kind
one runs to find response splitting and pooled-connection cross-talk). hypothesis builds, for
each of one to three requests (GET or HEAD) a client sends on one keep-alive connection
(pipelined, or one after the other), the bytes a raw backend answers it with: interim 1xx
answers, odd status lines (099, 600, HTTP/2.0, control bytes or obs-text in the reason),
duplicate or conflicting ``Content-Length`` (``5, 5``, signs, blanks, leading zeros, 20
digits), ``Transfer-Encoding`` variants (``Chunked``, ``gzip, chunked``, ``chunked, gzip``,
``identity``, two fields, with a ``Content-Length``), chunk-size oddities (extensions, blanks,
leading zeros, bad hex, a missing CRLF, trailers with odd names), a body shorter or longer
than declared, no length at all (read until close), a body after a HEAD, 204 or 304 answer,
a second response nobody asked for (with the first one's end, or 30 ms later), a backend
that closes early. Half of every part is the plain valid form, so valid exchanges deep
enough to desync are common.

The oracle is h11 (python-hyper's strict, pure-Python parser) as a client, reading the
bytes the backend sent for one request (then EOF, when the backend closed). What the client
of the real ReverseProxy reads, with h11 as a client too, must be for each request:

* the response the oracle reads: same status, same body, every end-to-end header (framing
  may be rewritten: re-chunked, a Content-Length), the interim answers but 100 (which the
  proxy swallows); and for HEAD and 304, the Content-Length the backend declared;
* or, when the oracle refuses the backend's bytes: a 502, or the connection closed, or a
  body cut short (the head went out before the backend broke its framing: then the status
  the backend sent and a prefix of the body it meant) -- and nothing after it;
* never bytes h11 cannot read, never more after the last answer, never a body that runs
  into the next answer, never an answer to another request (each names its request in
  ``X-Id`` and its body).

And a second client connection after each example asks for a fresh answer over the same
pool: bytes a backend sent after an answer must never reach it.

A 502 (or close, or cut) for a response the oracle accepts is allowed (stricter is safe)
but collected: rejecting valid responses hurts users. Run with ``-s`` to see a summary.

Leniencies the proxy has by design (RFC 9112 or harmless), tolerated by a lenient oracle
that reads the bytes with them applied, and counted in the summary:

* chunk size: blanks around the size (``" 5"``, ``"5 ;a"``) are ignored (RFC 9112 7.1.1
  allows BWS before ``;``); the proxy re-chunks, so the client never sees the original line;
* empty elements of a Transfer-Encoding list (``chunked,``) are ignored (RFC 9110 5.6.1);
* Transfer-Encoding overrides Content-Length (RFC 9112 6.3): the Content-Length is not
  checked then (h11 refuses a malformed one); the proxy never reuses such a connection;
* a response that has no body (to HEAD, 204, 304) is passed on whatever its framing fields
  say (h11 refuses ``Transfer-Encoding: gzip`` or ``Content-Length: +5`` on a HEAD answer):
  they frame nothing; the proxy drops what it cannot read and never reuses the connection.

More examples than the CI default: ``TRAYUPDATER_FRAMING_EXAMPLES=5000`` (then randomised).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import h11
import pytest
from framing_support import (
    chunked_body,
    end_to_end,
    framing_settings,
    hostile,
    length_fields,
    plain_only,
    without_chunk_size_blanks,
)
from hypothesis import event, given
from hypothesis import strategies as st
from proxy_support import TIMEOUT

from trayupdater.proxy import Backend, ReverseProxy

LATE_DELAY = 0.03  # a late second response comes this long after the first
LATE_WAIT = 0.15  # a client that asks again after a late response waits this long first
LATE_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Late: yes\r\n\r\nLATE"


# --- the backend: writes the scripted bytes for each request ----------------------------------


@dataclass(frozen=True)
class Script:
    """What the backend writes for one request."""

    method: bytes  # of the request it answers
    answer: bytes  # interim answers, the final head and the body as sent (maybe cut short)
    head: bytes = b""  # the final head, as generated (for the lenient reading)
    late: bytes = b""  # then bytes of no request: a second response, junk
    late_delay: bool = False  # the late bytes LATE_DELAY after the answer, not with its end
    split: int = 0  # > 0: the answer in two writes, 5 ms apart, cut here
    close: bool = False  # the backend closes the connection afterwards
    bodiless: bool = False  # the final answer has no body (HEAD, 204, 304)

    @property
    def stream(self) -> bytes:
        return self.answer + self.late


class ScriptBackend:
    """A raw loopback backend: each request head it reads names (by its target) the script
    it answers with. Every connection is served by a thread of its own."""

    def __init__(self) -> None:
        self.scripts: dict[bytes, Script] = {}
        self.seen: list[tuple[bytes, int]] = []  # (target, connection number)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.backend = Backend("127.0.0.1", self.listener.getsockname()[1], "scripted")
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            for number in itertools.count():
                conn, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        buf = bytearray()
        with sock, contextlib.suppress(OSError):
            sock.settimeout(TIMEOUT)
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                end = buf.index(b"\r\n\r\n") + 4
                target = bytes(buf[:end]).split(b" ", 2)[1]
                del buf[:end]
                self.seen.append((target, number))
                script = self.scripts.get(target)
                if script is None:
                    return
                answer = script.answer
                if script.split:
                    sock.sendall(answer[: script.split])
                    time.sleep(0.005)
                    answer = answer[script.split :]
                # Late bytes go with the end of the answer (in one write, so they are in the
                # proxy's socket before it has the whole answer), or after a while.
                sock.sendall(answer + (b"" if script.late_delay else script.late))
                if script.late_delay:
                    time.sleep(LATE_DELAY)
                    sock.sendall(script.late)
                if script.close:
                    # A graceful close: unread bytes at close() would reset the connection,
                    # and a reset may drop the answer before the proxy reads it.
                    sock.shutdown(socket.SHUT_WR)
                    sock.settimeout(1.0)
                    while sock.recv(65536):
                        pass
                    return

    def close(self) -> None:
        self.listener.close()


# --- the oracle: h11 as a client reading the backend's bytes ---------------------------------


@dataclass
class Answer:
    """One response as h11 (as a client) reads it."""

    status: int = 0  # 0: no final head read
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # names lower-case
    body: bytes = b""
    informational: list[int] = field(default_factory=list)
    complete: bool = False
    problem: str | None = None  # why h11 refuses it

    def value_of(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        return values[0] if values else None


def read_response(stream: bytes, method: bytes, eof: bool) -> Answer:
    """What ``stream`` means to h11 as a client that sent a ``method`` request."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(stream)
    if eof:
        conn.receive_data(b"")
    got = Answer()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                got.problem = "needs more bytes"
                return got
            if isinstance(event, h11.InformationalResponse):
                got.informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                got.status, got.headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                got.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                got.complete = True
                return got
            else:  # ConnectionClosed
                got.problem = "closed without an answer"
                return got
    except h11.RemoteProtocolError as exc:
        got.problem = str(exc)
        return got


def _after_end(stream: bytes, method: bytes) -> int:
    """How many bytes of ``stream`` come after the complete answer h11 reads in it (0 if
    it reads none)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(stream)
    with contextlib.suppress(h11.RemoteProtocolError):
        while (event := conn.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.EndOfMessage):
                return len(conn.trailing_data[0])
    return 0


def strict(script: Script) -> Answer:
    return read_response(script.stream, script.method, script.close)


_FRAMING_LINE = re.compile(rb"(?i)^(content-length|transfer-encoding)[ \t]*:")


def lenient(script: Script) -> Answer:
    """What ``script`` means with the proxy's documented leniencies (module docstring)."""
    lines = script.head.split(b"\r\n")
    te = any(line.lower().startswith(b"transfer-encoding:") for line in lines)
    kept: list[bytes] = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t") and dropping:
            continue  # the obs-fold continuation of a dropped line
        match = _FRAMING_LINE.match(line)
        name = match.group(1).lower() if match else b""
        dropping = bool(match) and (script.bodiless or (te and name == b"content-length"))
        if dropping:
            continue
        if name == b"transfer-encoding":
            name_part, _, value = line.partition(b":")
            line = name_part + b":" + b",".join(e for e in value.split(b",") if e.strip(b" \t"))
        kept.append(line)
    stream = script.stream.replace(script.head, b"\r\n".join(kept), 1)
    stream = without_chunk_size_blanks(stream)
    return read_response(stream, script.method, script.close)


# --- what the proxy's client reads ------------------------------------------------------------


class Trouble(Exception):
    """The proxy sent bytes h11 cannot read as the answers to the client's requests."""


class ClientReader:
    """Reads the proxy's answers on one client connection with h11 as a client, one request
    at a time, as they arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)
        self.eof = False
        self.raw = bytearray()

    def _more(self) -> None:
        data = b""
        if not self.eof:
            with contextlib.suppress(ConnectionResetError):
                data = self.sock.recv(65536)
        self.raw += data
        self.eof = not data
        self.conn.receive_data(data)

    def answer(self, method: bytes) -> Answer | None:
        """The answer to the next request (a ``method`` one), complete or cut short by the
        close; None when the proxy closed before it (or before this request)."""
        conn = self.conn
        if self.eof or conn.our_state is not h11.IDLE or conn.their_state is not h11.IDLE:
            return None
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        got: Answer | None = None
        interim: list[int] = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                cut = "without sending complete message body" in str(exc)
                if cut and self.eof and got is not None and conn.their_state is h11.ERROR:
                    return got  # the body cut short by the close
                raise Trouble(f"{exc} in {bytes(self.raw)[-300:]!r}") from exc
            if event is h11.NEED_DATA:
                self._more()
            elif isinstance(event, h11.InformationalResponse):
                interim.append(event.status_code)
            elif isinstance(event, h11.Response):
                got = Answer(event.status_code, list(event.headers), informational=interim)
            elif isinstance(event, h11.Data):
                assert got is not None
                got.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert got is not None
                got.complete = True
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                return got
            else:  # ConnectionClosed before any byte of an answer
                return None

    def rest(self) -> bytes:
        """Whatever the proxy sends after the last answer, until it closes."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        data = b""
        if self.conn.their_state is not h11.ERROR:
            data = bytes(self.conn.trailing_data[0])
        with contextlib.suppress(ConnectionResetError):
            while not self.eof and (chunk := self.sock.recv(65536)):
                data += chunk
        return data


# --- the backend's parts -----------------------------------------------------------------------

STATUS_LINES = [
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 404 Not Found",
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 304 Not Modified",
    b"HTTP/1.0 200 OK",
    b"HTTP/1.1 299 Odd",
    b"HTTP/1.1 099 Low",
    b"HTTP/1.1 600 High",
    b"HTTP/1.1 000 Zero",
    b"HTTP/1.1 200",
    b"HTTP/1.1 200 ",
    b"HTTP/1.1 200 \xe9t\xe9 \x80\xff",  # obs-text
    b"HTTP/1.1 200 a\tb",
    b"HTTP/1.1 200 a\x01b",
    b"HTTP/1.1 200 a\x00b",
    b"HTTP/1.1 200 a\x7fb",
    b"HTTP/1.1 200 a\rb",
    b"HTTP/1.1 200 a\nX-Injected: 1",
    b"HTTP/2.0 200 OK",
    b"HTTP/1.1  200 OK",
    b"HTTP/1.1 20 OK",
    b"http/1.1 200 OK",
    b" HTTP/1.1 200 OK",
]
INTERIM = [
    b"",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
    b"HTTP/1.1 199 Odd\r\nX-I: 1\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n\r\n",  # an empty line after it
]
TE_LINES = [
    [b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: Chunked"],
    [b"transfer-encoding: CHUNKED"],
    [b"Transfer-Encoding: chunked "],
    [b"Transfer-Encoding: gzip, chunked"],
    [b"Transfer-Encoding: chunked, gzip"],
    [b"Transfer-Encoding: identity"],
    [b"Transfer-Encoding: identity, chunked"],
    [b"Transfer-Encoding: chunked,"],
    [b"Transfer-Encoding: chunked, chunked"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: xchunked"],
    [b"Transfer-Encoding : chunked"],
    [b"Transfer-Encoding: identity", b" chunked"],  # obs-fold
    [b"Transfer-Encoding:"],
]
ODD_FIELDS = [
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: X-Private",
    b"Keep-Alive: timeout=5",
    b"Trailer: X-T",
    b"X-A: \xe9",  # obs-text in a value
    b"X-A: a\x00b",
    b"X-A: a\x01b",
    b"X A: 1",
    b"X-A : 1",
    b"X-A: 1\r\n folded",
    b"X-A",
]
TRAILERS = [
    b"",
    b"X-T: 1\r\n",
    b"X-T: 1\r\n folded\r\n",
    b"X-T : 1\r\n",
    b"X T: 1\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"X-T: a\x00b\r\n",
    b":x\r\n",
    b"X-T: \xe9\r\n",
]


@st.composite
def scripts(draw: st.DrawFn, number: int, method: bytes, pipelined: bool) -> Script:
    """The backend's bytes for request ``number``: half the time a valid answer (which may
    still carry a body after HEAD, 204 or 304, or bytes after its end), else each part as a
    broken backend writes it."""
    plain = draw(st.booleans())
    pick = plain_only if plain else hostile
    interim = draw(st.sampled_from(INTERIM[:3]) if plain else hostile(INTERIM))
    status_line = draw(st.sampled_from(STATUS_LINES[:5]) if plain else hostile(STATUS_LINES))
    lines = [status_line, b"X-Id: %d" % number]
    body = draw(
        st.sampled_from(
            [
                b"body %d" % number,
                b"",
                b"<%d>" % number + b"x" * 300,
                b"%d:" % number + LATE_ANSWER,
                b"%d:0\r\n\r\n" % number,
                b"%d:" % number + b"y" * 70000,  # more than the proxy reads before relaying
                b"%d:" % number + b"z" * 300000,  # enough for the proxy to splice it
            ]
        )
    )
    framing = draw(st.sampled_from(["length", "length", "chunked", "chunked", "none", "both"]))
    payload = body
    if framing in ("chunked", "both"):
        lines += draw(pick(TE_LINES))
        payload = draw(
            chunked_body(
                body,
                pick,
                offsets=pick([0, -1, 1]),
                ends=pick([b"\r\n", b"\n", b"", b"XX"]),
                lasts=pick([b"0", b"00", b"0;ext=1", b"0 ", b" 0", b"000000000000000000000"]),
                trailers=st.sampled_from(TRAILERS[:2]) if plain else hostile(TRAILERS),
                finals=pick([b"\r\n", b"", b"\n"]),
            )
        )
    if framing in ("length", "both"):
        # With Transfer-Encoding too (which wins): the length of the body, or of the chunks.
        length = draw(st.sampled_from([body, payload]))
        lines += [b"Content-Length: %d" % len(length)] if plain else draw(length_fields(length))
    if not plain and draw(st.integers(0, 2)) == 0:
        lines.insert(draw(st.integers(1, len(lines))), draw(st.sampled_from(ODD_FIELDS)))
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    bodiless = method == b"HEAD" or status_line[9:12] in (b"204", b"304")
    sent = payload if not bodiless or draw(st.integers(0, 2)) == 0 else b""
    answer = interim + head + sent
    late = draw(
        hostile(
            [
                b"",
                LATE_ANSWER,
                b"LATE",
                b"\r\n",
                b"0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nLATE",
            ]
        )
    )
    cut = None if plain else draw(st.sampled_from([None] * 4 + ["head", "body"]))
    if cut == "head":  # the backend closes in the middle of its head
        answer = answer[: draw(st.integers(len(interim), len(interim) + len(head) - 1))]
        late = b""
    elif cut == "body" and sent:
        answer = answer[: draw(st.integers(len(answer) - len(sent), len(answer) - 1))]
        late = b""
    # A late answer 30 ms after a pipelined one may reach the next request on that backend
    # connection: any proxy sends it there before the bytes come (inherent to HTTP/1.1).
    late_delay = bool(late) and not pipelined and draw(st.booleans())
    # The answer in two writes: cut inside what h11 reads as the answer. Bytes after it (a
    # body after HEAD, 204 or 304) must come with its end, as late bytes do.
    # But a head that announces a body (a Content-Length other than 0, a Transfer-Encoding)
    # tells the proxy such bytes may follow: then they may come later.
    split = 0
    end = len(answer) - _after_end(answer, method)
    if bodiless and sent and _announces(head):
        end = len(answer)
    if end > 1 and draw(st.integers(0, 3)) == 0:
        split = draw(st.integers(1, end - 1))
    script = Script(method, answer, head, late, late_delay, split, draw(st.booleans()), bodiless)
    if not script.close and not read_response(script.stream, method, eof=False).complete:
        # Not a whole answer (no length, too short, malformed): the backend must close, or
        # the proxy would wait for the rest until its timeout.
        script = Script(method, answer, head, late, late_delay, split, True, bodiless)
    return script


def _announces(head: bytes) -> bool:
    """Does ``head`` announce a body (to the proxy, for an answer that has none)?"""
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"transfer-encoding":
            return True
        if colon and name.lower() == b"content-length" and value.strip(b" \t") != b"0":
            return True
    return False


@dataclass
class Case:
    pipelined: bool
    scripts: list[Script]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    pipelined = draw(st.booleans())
    methods = draw(st.lists(st.sampled_from([b"GET", b"GET", b"HEAD"]), min_size=1, max_size=3))
    return Case(pipelined, [draw(scripts(i, m, pipelined)) for i, m in enumerate(methods)])


# --- the property ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def script_backend() -> Iterator[ScriptBackend]:
    backend = ScriptBackend()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def proxy(script_backend: ScriptBackend) -> Iterator[ReverseProxy]:
    proxy = ReverseProxy("127.0.0.1", 0, backend_timeout=2.0, body_timeout=2.0, header_timeout=2.0)
    proxy.start()
    proxy.switch(script_backend.backend)
    yield proxy
    proxy.close()


STRICTER: collections.Counter[str] = collections.Counter()
LENIENT: collections.Counter[str] = collections.Counter()
EXAMPLES_OF: dict[str, bytes] = {}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for title, counter in (
        ("Responses h11 accepts that the proxy refuses (stricter is safe):", STRICTER),
        ("Responses h11 refuses that the proxy passes on (documented leniencies):", LENIENT),
    ):
        if counter:
            print(f"\n{title}")
            for reason, count in counter.most_common():
                print(f"  {count:4d}  {reason}: e.g. {EXAMPLES_OF[reason]!r}")


def _note(counter: collections.Counter[str], reason: str, stream: bytes) -> None:
    counter[reason] += 1
    EXAMPLES_OF.setdefault(reason, stream[:300])


_examples = itertools.count(1)


def converse(
    proxy: ReverseProxy, case: Case, targets: list[bytes]
) -> tuple[list[Answer | None], bytes]:
    """Send the requests (all at once, or each after the answer before), read the answers;
    (the answers, whatever came after the last one)."""
    requests = [
        b"%s %s HTTP/1.1\r\nHost: x\r\n\r\n" % (s.method, t)
        for s, t in zip(case.scripts, targets, strict=True)
    ]
    answers: list[Answer | None] = []
    with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
        reader = ClientReader(sock)
        if case.pipelined:
            sock.sendall(b"".join(requests))
        for i, script in enumerate(case.scripts):
            if not case.pipelined:
                if i and case.scripts[i - 1].late_delay:
                    time.sleep(LATE_WAIT)
                with contextlib.suppress(OSError):
                    sock.sendall(requests[i])
            answers.append(reader.answer(script.method))
        return answers, reader.rest()


def check_answer(got: Answer, meant: Answer, script: Script) -> None:
    """``got`` (complete, or cut short) is the response the backend's bytes mean."""
    what = f"for {script.method!r} {script.stream[:400]!r}"
    assert got.status == meant.status, f"status {got.status}, the backend meant {meant} {what}"
    if got.complete:
        assert got.body == meant.body, f"body {got.body[:200]!r}, meant {meant.body[:200]!r} {what}"
    else:
        assert meant.body.startswith(got.body), f"cut body {got.body[:200]!r} is not {what}"
    for header in end_to_end(meant.headers):
        assert header in got.headers, f"{header!r} lost: {got.headers!r} {what}"
    assert got.informational == [s for s in meant.informational if s != 100], what
    declared = meant.value_of(b"content-length")
    if got.complete and script.bodiless and meant.status != 204 and 0 < len(declared or b"") < 19:
        # HEAD and 304 describe the body they do not carry: the length stays (unless it has
        # more digits than the proxy reads: 18; h11 reads 20).
        assert int(got.value_of(b"content-length") or -1) == int(declared), f"{got!r} {what}"


def _explains(meant: Answer, got: Answer) -> bool:
    """Is ``got``, cut short, the start of the answer ``meant`` (cut short too)?"""
    return not got.complete and got.status == meant.status and meant.body.startswith(got.body)


def judge(got: Answer | None, script: Script) -> bool:
    """Check the answer to one request; True if it was the backend's answer passed on (the
    connection may carry the next one)."""
    meant = strict(script)
    stream = script.stream
    if got is None or (got.complete and got.status == 502):
        if meant.complete:
            why = "closed" if got is None else "502"
            _note(STRICTER, f"{why}: {_why_refused(script, meant)}", stream)
        return False
    if meant.complete:
        if not got.complete:
            _note(STRICTER, f"cut short: {_why_refused(script, meant)}", stream)
    elif not _explains(meant, got):
        meant = lenient(script)
        assert meant.complete or (not got.complete and meant.status), (
            f"the proxy passed on {got.status} {got.body[:100]!r} "
            f"({'whole' if got.complete else 'cut'}), h11 refuses the backend's bytes "
            f"({strict(script).problem}): {script.method!r} {stream[:400]!r}"
        )
        if got.complete:
            _note(LENIENT, _why_lenient(script), stream)
    check_answer(got, meant, script)
    return got.complete


@framing_settings(300)
@given(case=cases())
def test_the_proxy_passes_on_exactly_the_responses_a_strict_client_reads(
    proxy: ReverseProxy, script_backend: ScriptBackend, case: Case
) -> None:
    n = next(_examples)
    targets = [b"/e%d/r%d" % (n, i) for i in range(len(case.scripts))]
    script_backend.scripts.update(zip(targets, case.scripts, strict=True))
    probes = [b"/e%d/probe%d" % (n, i) for i in range(3)]
    for target in probes:
        body = b"fresh answer for " + target
        script_backend.scripts[target] = Script(
            b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    # A pool of its own (a new generation): what this example leaves in the pool is found by
    # its own probes, not by the next example's requests.
    proxy.switch(script_backend.backend)
    try:
        answers, rest = converse(proxy, case, targets)
    except Trouble as exc:
        raise AssertionError(f"the client cannot read the answers: {exc} for {case!r}") from exc
    going = True
    for got, script in zip(answers, case.scripts, strict=True):
        event(_outcome(got, script) if going else "after the end")
        if not going:
            assert got is None, f"an answer after the connection ended: {got!r} for {case!r}"
            continue
        going = judge(got, script)
    assert not rest, f"bytes after the last answer: {rest[:200]!r} for {case!r}"

    # Other clients, at once (so each takes a pooled backend connection of its own, if
    # there are that many): nothing of this example's answers.
    if any(s.late_delay for s in case.scripts):
        time.sleep(LATE_WAIT)
    with contextlib.ExitStack() as stack:
        socks = []
        for target in probes:
            sock = stack.enter_context(socket.create_connection(proxy.address, timeout=TIMEOUT))
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
            socks.append(sock)
        for sock, target in zip(socks, probes, strict=True):
            probe = ClientReader(sock).answer(b"GET")
            assert probe is not None and probe.body == b"fresh answer for " + target, (
                f"another client got {probe!r} after {case!r}"
            )


def _outcome(got: Answer | None, script: Script) -> str:
    """What happened to one request, for ``--hypothesis-show-statistics``."""
    valid = "valid" if strict(script).complete else "invalid"
    if got is None:
        return f"{valid}: closed"
    if got.complete and got.status == 502:
        return f"{valid}: 502"
    return f"{valid}: {'passed on' if got.complete else 'cut short'}"


def _why_refused(script: Script, meant: Answer) -> str:
    """A guess at what in a response h11 accepts made the proxy refuse it, for the report."""
    head = script.head
    if not 100 <= meant.status <= 599:
        return f"status {meant.status} (outside 100-599)"
    if not head.startswith(b"HTTP/1."):
        return "not HTTP/1.x"
    if re.search(rb"\r\n[ \t]", script.answer):
        return "obs-fold in the head or trailers (h11 unfolds)"
    if re.search(rb"(?<!\r)\n", script.answer):
        return "bare LF (h11 takes it for CRLF)"
    if re.search(rb"(?i)content-length:[ \t]*\d{19}", head):
        return "Content-Length of more than 18 digits"
    if re.search(rb"(?m)^[0-9A-Fa-f]{17,}", script.answer[len(head) :]):
        return "chunk size of more than 16 digits"
    if re.search(rb"[\x01-\x08\x0e-\x1f\x7f]", head):
        return "control character in the head"
    return "other"


def _why_lenient(script: Script) -> str:
    head = script.head.lower()
    if script.bodiless:
        return "framing fields of a bodiless answer"
    if b"transfer-encoding" in head and b"content-length" in head:
        return "Transfer-Encoding overrides a bad Content-Length"
    if b"chunked," in head:
        return "empty Transfer-Encoding list element"
    return "blanks around a chunk size"
