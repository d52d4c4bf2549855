"""A backend that breaks HTTP/1.1 in ways real servers do: the proxy must never hand one
client's bytes to another, and says 502 rather than pass a broken answer on.

Real parts: a real ReverseProxy, and raw scripted backends on loopback
(``proxy_support.ScriptedBackend``) for answers no HTTP library would write.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from proxy_support import TIMEOUT, ScriptedBackend
from proxy_support import get as _get

from trayupdater.proxy import Backend, ReverseProxy

Requests = Callable[[], bytes | None]


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., ReverseProxy]]:
    proxies: list[ReverseProxy] = []

    def make(backend: Backend, **options: object) -> ReverseProxy:
        proxy = ReverseProxy("127.0.0.1", 0, **options)  # type: ignore[arg-type]
        proxy.start()
        proxies.append(proxy)
        proxy.switch(backend)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedBackend]]:
    made: list[ScriptedBackend] = []

    def make(script: Callable[[socket.socket, Requests], None]) -> ScriptedBackend:
        made.append(ScriptedBackend(script))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


def _path(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


def _answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


# --- bytes a backend sends after its answer never reach another client -------------------------


def test_bytes_a_backend_sends_after_its_answer_never_reach_the_next_client(
    make_proxy, scripted
) -> None:
    """A second, unsolicited response 50 ms after the first stays in the idle pooled
    connection; the next GET (another client) used to take it as its own answer."""

    def script(conn: socket.socket, requests: Requests) -> None:
        while (head := requests()) is not None:
            conn.sendall(_answer(b"answer for " + _path(head)))
            if _path(head) == b"/first":
                time.sleep(0.05)
                conn.sendall(_answer(b"SECRET-of-alice", b"X-Leak: yes\r\n"))

    proxy = make_proxy(scripted(script).backend)
    assert _get(proxy, "/first")[1] == b"answer for /first"
    time.sleep(0.3)
    for path in ("/second", "/third"):
        status, body, _ = _get(proxy, path)
        assert (status, body) == (200, b"answer for " + path.encode())


class _HeadLikeGet(http.server.BaseHTTPRequestHandler):
    """The common mistake ``do_HEAD = do_GET``: a HEAD answered with its body, written
    after the head."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b"<html>" + self.path.encode() + b"</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        self.wfile.write(body)

    do_HEAD = do_GET


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the proxy closing a connection it will not reuse is expected here


def test_a_head_answered_with_a_body_does_not_poison_the_next_request(make_proxy) -> None:
    server = _QuietServer(("127.0.0.1", 0), _HeadLikeGet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proxy = make_proxy(Backend("127.0.0.1", server.server_address[1], "head-like-get"))
        for i in range(20):
            with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
                sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while sock.recv(65536):
                    pass
            status, body, _ = _get(proxy, f"/g{i}")
            assert (status, body) == (200, f"<html>/g{i}</html>".encode())
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status_line", [b"204 No Content", b"304 Not Modified"])
def test_a_bodiless_answer_that_declares_a_body_is_not_reused(
    make_proxy, scripted, status_line: bytes
) -> None:
    def script(conn: socket.socket, requests: Requests) -> None:
        while (head := requests()) is not None:
            if _path(head) == b"/empty":
                conn.sendall(b"HTTP/1.1 " + status_line + b"\r\nContent-Length: 9\r\n\r\n")
                time.sleep(0.02)
                conn.sendall(b"leftovers")
            else:
                conn.sendall(_answer(b"answer for " + _path(head)))

    backend = scripted(script)
    proxy = make_proxy(backend.backend)
    for i in range(5):
        assert _get(proxy, "/empty")[0] == int(status_line[:3])
        status, body, _ = _get(proxy, f"/n{i}")
        assert (status, body) == (200, f"answer for /n{i}".encode())


def test_a_head_answer_with_conflicting_lengths_is_not_reused(make_proxy, scripted) -> None:
    """``Content-Length: 0`` then ``Content-Length: 38`` on a HEAD answer, and 38 bytes (a
    whole response) 200 ms later: only the first field was looked at, so the connection went
    back to the pool as clean, and the pipelined GET took those bytes for its answer."""
    evil = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"

    def script(conn: socket.socket, requests: Requests) -> None:
        while (head := requests()) is not None:
            if head.startswith(b"HEAD "):
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n"
                    % len(evil)
                )
                time.sleep(0.2)
                conn.sendall(evil)
            else:
                conn.sendall(_answer(b"answer for " + _path(head)))

    proxy = make_proxy(scripted(script).backend)
    with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
        sock.sendall(
            b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b"EVIL" not in data, data
    assert data.endswith(b"\r\n\r\nanswer for /next"), data


# --- answers that cannot be passed on faithfully are 502 ---------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        # Transfer-Encoding is hop-by-hop: passed on as "chunked" alone, the client would
        # take the gzip bytes for the body itself.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"5\r\n\x1f\x8b\x08\x00\x00\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n\x1f\x8b\x08\x00",
        # A status line must carry 100-599: 099 was passed on as an interim "HTTP/1.1 99".
        b"HTTP/1.1 099 Weird\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["gzip-chunked", "gzip-alone", "status-099", "status-000", "status-600"],
)
def test_an_answer_that_cannot_be_passed_on_faithfully_is_502(
    make_proxy, scripted, answer: bytes
) -> None:
    def script(conn: socket.socket, requests: Requests) -> None:
        if requests() is not None:
            conn.sendall(answer)
            conn.shutdown(socket.SHUT_WR)

    proxy = make_proxy(scripted(script).backend)
    with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer after {data!r}"
            data += chunk
    assert data.startswith(b"HTTP/1.1 502 "), data[:80]


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok"],
    ids=["lf-lf", "lf-crlf"],
)
def test_an_answer_head_ended_by_a_bare_lf_is_502_at_once(
    make_proxy, scripted, answer: bytes
) -> None:
    # Not a 504 after backend_timeout (30 s) spent waiting for a CRLF CRLF.
    def script(conn: socket.socket, requests: Requests) -> None:
        if requests() is not None:
            conn.sendall(answer)
            requests()  # holds the connection open until the proxy gives up on it

    proxy = make_proxy(scripted(script).backend)
    with socket.create_connection(proxy.address, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer after {data!r}"
            data += chunk
    assert data.startswith(b"HTTP/1.1 502 "), data[:80]


# --- a backend that answers before it has read the whole request body ------------------------


def test_an_early_answer_to_a_streamed_upload_reaches_the_client(make_proxy, scripted) -> None:
    """A backend refusing a large upload with 413 before reading it (Go's MaxBytesReader),
    then closing: the client gets that 413, not a 502 made from the failed send."""

    def script(conn: socket.socket, requests: Requests) -> None:
        if requests() is not None:
            body = b"too large"
            conn.sendall(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(body), body)
            )
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.2)  # then close with the body unread (the kernel sends RST)

    proxy = make_proxy(scripted(script).backend, max_buffered_body=64 * 1024)
    statuses = []
    for _ in range(5):
        with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
            size = 3 * 1024 * 1024
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            sent, data = 0, b""
            sock.settimeout(0.05)
            while b"\r\n\r\n" not in data:
                try:
                    if sent < size:
                        sent += sock.send(b"x" * min(65536, size - sent))
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    break
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                data += chunk
            statuses.append(data[9:12])
    assert statuses == [b"413"] * 5


# --- what the log says about a backend that never answers ---------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="read by the dispatcher"),
        pytest.param(
            b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + b"u" * 300_000,
            id="read by a worker (a streamed upload)",
        ),
    ],
)
def test_a_backend_that_never_answers_is_logged_as_timed_out(
    make_proxy, scripted, caplog, request_bytes: bytes
) -> None:
    """A worker's read that runs into its kernel timeout fails with EAGAIN: the log said the
    request 'could not reach' the version '(resource temporarily unavailable)', which sends
    a user looking for a resource shortage instead of a backend that hangs."""

    def script(conn: socket.socket, requests: Requests) -> None:
        if requests() is not None:
            with contextlib.suppress(OSError):
                while conn.recv(65536):  # takes the body, never answers
                    pass

    caplog.set_level(logging.WARNING, logger="trayupdater.proxy")
    proxy = make_proxy(scripted(script).backend, backend_timeout=0.5, max_buffered_body=1000)
    with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
        sock.sendall(request_bytes)
        assert sock.recv(65536).startswith(b"HTTP/1.1 504 ")
    proxy.close()  # writes the summary lines still counted
    lines = [r.getMessage() for r in caplog.records if "could not reach" in r.getMessage()]
    assert lines, [r.getMessage() for r in caplog.records]
    assert all(line.endswith("(timed out)") for line in lines), lines
