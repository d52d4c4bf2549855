"""The reverse proxy against real backends on real loopback sockets.

The backends are real ``http.server`` instances (see proxy_support.py); clients are
``http.client`` or raw sockets where the bytes on the wire are the point.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from proxy_support import TIMEOUT, RealBackend
from proxy_support import get as _get
from proxy_support import open_client as _client
from proxy_support import raw as _raw
from proxy_support import read_all as _read_all
from proxy_support import wait_readable as _wait_readable
from proxy_support import wait_until as _wait_until

from trayupdater import http11
from trayupdater.errors import ConfigError
from trayupdater.proxy import (
    Backend,
    ReverseProxy,
    bodies,
    dispatcher,
    poller,
    sockets,
    steps,
    streams,
    zerocopy,
)


@pytest.fixture
def backends() -> Iterator[list[RealBackend]]:
    started: list[RealBackend] = []
    yield started
    for backend in started:
        backend.close()


@pytest.fixture
def make_backend(backends: list[RealBackend]):
    def make(label: str = "v1") -> RealBackend:
        backend = RealBackend(label)
        backends.append(backend)
        return backend

    return make


@pytest.fixture(autouse=True, params=["native", "portable"])
def platform_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on this machine's fast paths (epoll, sends without blocking,
    splice) and again on the portable ones macOS and Windows take: a selectors poller, every
    send in a worker (no MSG_DONTWAIT on Windows: blocking client sockets, streams read
    blocking), bodies copied rather than spliced."""
    if request.param == "portable":
        monkeypatch.setattr(poller, "KIND", "selectors")
        monkeypatch.setattr(steps, "DONTWAIT", 0)
        monkeypatch.setattr(streams, "DONTWAIT", 0)
        monkeypatch.setattr(bodies, "DONTWAIT", 0)
        monkeypatch.setattr(dispatcher, "client_mode", sockets.blocking_with_timeouts)
        monkeypatch.setattr(zerocopy, "AVAILABLE", False)
    return request.param


@pytest.fixture
def make_proxy():
    proxies: list[ReverseProxy] = []

    def make(backend: Backend | None = None, **options) -> ReverseProxy:
        proxy = ReverseProxy("127.0.0.1", 0, **options)
        proxy.start()
        proxies.append(proxy)
        if backend is not None:
            proxy.switch(backend)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


# -- basics ------------------------------------------------------------------------------------


def test_get_post_and_keep_alive_reuse(make_backend, make_proxy):
    backend = make_backend("1.2.3")
    proxy = make_proxy(backend.backend)
    conn = _client(proxy)
    conn.request("GET", "/version")
    first = conn.getresponse()
    assert (first.status, first.read()) == (200, b"1.2.3")
    sock = conn.sock
    for i in range(5):
        body = f"payload {i}".encode() * 100
        conn.request("POST", "/echo", body=body)
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("X-Method") == "POST"
        assert response.read() == body
    assert conn.sock is sock, "the client connection was kept alive"
    conn.close()
    assert backend.server.connections == 1, "one pooled upstream connection served all"
    assert proxy.current == backend.backend


def test_chunked_request_and_chunked_response_with_trailers(make_backend, make_proxy):
    proxy = make_proxy(make_backend().backend)
    conn = _client(proxy)
    parts = [b"alpha-", b"beta-" * 1000, b"gamma"]
    conn.request("POST", "/echo", body=iter(parts), encode_chunked=True)
    response = conn.getresponse()
    assert response.read() == b"".join(parts)
    conn.close()

    sock = _raw(proxy)
    sock.sendall(b"GET /chunked?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = _read_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"trailer:" not in head.lower(), "Trailer is hop-by-hop"
    assert b"part0;" in body and b"part2;" in body
    assert body.endswith(b"0\r\nX-Checksum: abc\r\n\r\n"), "trailers are passed on"


@pytest.mark.parametrize("query", ["n=3&whole=1", "n=3"], ids=["in-one-write", "piece-by-piece"])
def test_chunked_response_reaches_http11_and_http10_clients(make_backend, make_proxy, query):
    """All in hand at once (relayed without a worker) or arriving in pieces (a worker)."""
    proxy = make_proxy(make_backend().backend)
    conn = _client(proxy)
    for _ in range(2):
        conn.request("GET", f"/chunked?{query}")
        response = conn.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.read() == b"part0;part1;part2;"
    sock = conn.sock
    assert sock is not None, "the client connection was kept alive"
    conn.close()

    sock = _raw(proxy)
    sock.sendall(f"GET /chunked?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, _, body = _read_all(sock).partition(b"\r\n\r\n")
    assert body.endswith(b"0\r\nX-Checksum: abc\r\n\r\n"), "trailers are passed on"

    sock = _raw(proxy)
    sock.sendall(f"GET /chunked?{query} HTTP/1.0\r\n\r\n".encode())
    head, _, body = _read_all(sock).partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower() and b"connection: close" in head.lower()
    assert body == b"part0;part1;part2;", "the bare data for a client that cannot take chunks"


def test_malformed_chunked_answer_in_one_write_is_cut_short_like_a_streamed_one(make_proxy):
    """Bytes all in hand that fail decoding take the streaming path: the client gets the
    head and the good chunks, then a close without the last chunk, and the proxy goes on."""
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nBad Trailer Name: x\r\n\r\n"
    )
    listener = socket.create_server(("127.0.0.1", 0))
    served = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while not served.is_set():
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)
                    conn.recv(65536)  # until the proxy closes it

    threading.Thread(target=serve, daemon=True).start()
    try:
        proxy = make_proxy(Backend("127.0.0.1", listener.getsockname()[1], "raw"))
        sock = _raw(proxy)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = _read_all(sock).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"hello" in body and not body.endswith(b"0\r\n\r\n"), "cut short, not completed"
    finally:
        served.set()
        listener.close()


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\n",
        b"GET / HTTP/1.1\nHost: x\n\r\n",
    ],
)
def test_a_head_ended_by_a_bare_lf_is_refused_at_once(make_backend, make_proxy, head):
    # Bare LF line ends are refused (400); one ending the head must not leave the client
    # waiting for a CRLF CRLF until the header timeout (10 s) and then a 408.
    proxy = make_proxy(make_backend().backend)
    sock = _raw(proxy)
    sock.settimeout(5)
    sock.sendall(head)
    started = time.monotonic()
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert time.monotonic() - started < 5


def test_response_without_length_is_rechunked_for_http11_and_close_delimited_for_10(
    make_backend, make_proxy
):
    proxy = make_proxy(make_backend().backend)
    conn = _client(proxy)
    for _ in range(2):  # chunked re-framing keeps the client connection usable
        conn.request("GET", "/until-close")
        response = conn.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.read() == b"no length, the close ends me"
    conn.close()

    sock = _raw(proxy)
    sock.sendall(b"GET /until-close HTTP/1.0\r\n\r\n")
    head, _, body = _read_all(sock).partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"no length, the close ends me"


def test_head_204_304_have_no_body_and_keep_the_connection(make_backend, make_proxy):
    proxy = make_proxy(make_backend("v9").backend)
    conn = _client(proxy)
    conn.request("HEAD", "/big?n=5000")
    response = conn.getresponse()
    assert response.getheader("Content-Length") == "5000"
    assert response.read() == b""
    conn.request("GET", "/status?code=204")
    response = conn.getresponse()
    assert (response.status, response.read()) == (204, b"")
    conn.request("GET", "/status?code=304")
    response = conn.getresponse()
    assert response.status == 304
    assert response.getheader("Content-Length") == "1234"
    assert response.read() == b""
    conn.request("GET", "/version")  # nothing from the bodiless answers leaked into this one
    assert conn.getresponse().read() == b"v9"
    conn.close()


def test_big_bodies_stream_both_ways(make_backend, make_proxy):
    proxy = make_proxy(make_backend().backend)
    conn = _client(proxy)
    body = bytes(range(256)) * 8192  # 2 MiB
    conn.request("PUT", "/echo", body=body)
    assert conn.getresponse().read() == body
    conn.request("GET", "/big?n=3000000")
    assert len(conn.getresponse().read()) == 3_000_000
    conn.close()


def test_expect_100_continue(make_backend, make_proxy):
    proxy = make_proxy(make_backend().backend)
    sock = _raw(proxy)
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = sock.recv(1024)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    sock.sendall(b"hello")
    response = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
    while not response.endswith(b"hello"):
        more = sock.recv(4096)
        assert more, f"closed early: {response!r}"
        response += more
    assert response.startswith(b"HTTP/1.1 200 ")
    sock.close()

    sock = _raw(proxy)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: teapot\r\n\r\n")
    assert _read_all(sock).startswith(b"HTTP/1.1 417 ")


def test_http10_client_gets_close_semantics(make_backend, make_proxy):
    backend = make_backend("v10")
    proxy = make_proxy(backend.backend)
    sock = _raw(proxy)
    sock.sendall(b"GET /version HTTP/1.0\r\n\r\n")  # no Host: the proxy names the backend
    head, _, body = _read_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in head.lower()
    assert body == b"v10"


def test_http11_framing_rules():
    """The framing decisions behind the socket tests, on exact inputs."""
    head = http11.parse_request_head(
        b"POST /x HTTP/1.1\r\nHost: h\r\nX-A:  padded \t\r\nContent-Length: 5, 5\r\n\r\n"
    )
    assert head.get("x-a") == "padded"
    assert http11.request_framing(head) == (http11.Framing.LENGTH, 5)  # same value twice: fine
    with pytest.raises(http11.HttpError) as err:
        http11.request_framing(
            http11.parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n")
        )
    assert err.value.status == 400

    def response(raw: bytes, method: str = "GET"):
        return http11.response_framing(http11.parse_response_head(raw), method)

    both = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert response(both) == (http11.Framing.CHUNKED, 0, False), "TE wins, never reused"
    assert response(b"HTTP/1.1 200 OK\r\n\r\n")[0] is http11.Framing.UNTIL_CLOSE
    assert response(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n")[2] is False
    assert response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", "HEAD")[0] is (
        http11.Framing.NONE
    )
    with pytest.raises(http11.HttpError):
        http11.parse_response_head(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n")


# -- headers -----------------------------------------------------------------------------------


def test_forwarded_headers_added_and_hop_by_hop_removed(make_backend, make_proxy):
    proxy = make_proxy(make_backend().backend)
    conn = _client(proxy)
    conn.request(
        "GET",
        "/headers",
        headers={
            "Host": "example.test:8080",
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",  # a client cannot claim TLS the proxy did not see
            "Connection": "keep-alive, X-Secret, X-Forwarded-For",
            "X-Secret": "hop",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "TE": "trailers",
            "Upgrade": "h2c",
            "X-Kept": "end-to-end",
        },
    )
    fields = json.loads(conn.getresponse().read())
    names = [name.lower() for name, _ in fields]
    got = {name.lower(): value for name, value in fields}
    assert got["x-forwarded-for"] == "203.0.113.7, 127.0.0.1", "appended, not replaced"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == "example.test:8080"
    assert got["host"] == "example.test:8080"
    assert got["x-kept"] == "end-to-end"
    for hop in ("x-secret", "keep-alive", "proxy-authorization", "te", "upgrade", "connection"):
        assert hop not in names, f"{hop} must not be forwarded"
    assert names.count("x-forwarded-for") == 1


def test_underscored_twins_of_framing_and_forwarding_headers_are_not_forwarded(
    make_backend, make_proxy
):
    # CGI, WSGI and PHP backends read "_" as "-": Transfer_Encoding arrives as
    # HTTP_TRANSFER_ENCODING, X_Forwarded_For as the client address the proxy vouches for.
    proxy = make_proxy(make_backend().backend)
    conn = _client(proxy)
    conn.request(
        "POST",
        "/headers",
        body=b"hello",
        headers={
            "Host": "example.test",
            "Transfer_Encoding": "chunked",
            "Content_Length": "0",
            "X_Forwarded_For": "6.6.6.6",
            "X_Forwarded_Host": "evil.test",
            "Proxy_Authorization": "Basic Zm9vOmJhcg==",
            "Keep_Alive": "timeout=5",
            "X_Api_Key": "kept",  # an ordinary name with an underscore goes on
        },
    )
    fields = json.loads(conn.getresponse().read())
    names = [name.lower() for name, _ in fields]
    for twin in (
        "transfer_encoding",
        "content_length",
        "x_forwarded_for",
        "x_forwarded_host",
        "proxy_authorization",
        "keep_alive",
    ):
        assert twin not in names, f"{twin} must not be forwarded"
    got = {name.lower(): value for name, value in fields}
    assert got["x_api_key"] == "kept"
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["content-length"] == "5"

    conn.request("GET", "/hop")
    response = conn.getresponse()
    response.read()
    assert response.getheader("X-Public") == "yes"
    for hop in ("X-Private", "Keep-Alive", "Proxy-Thing", "Connection"):
        assert response.getheader(hop) is None, f"{hop} must not reach the client"
    conn.close()


# -- errors ------------------------------------------------------------------------------------


def test_no_backend_answers_503_with_retry_after(make_proxy):
    proxy = make_proxy()
    status, _, response = _get(proxy, "/")
    assert status == 503
    assert response.getheader("Retry-After") == "1"
    assert proxy.current is None


def test_refused_upload_gets_a_clean_close_not_a_reset(make_proxy):
    """No backend: the 503 goes out while the upload is unread. A plain close() would answer
    the unread bytes with an RST (which on some systems destroys the 503 in flight); the
    proxy shuts down its side and reads the rest instead, so the client sees a clean EOF."""
    proxy = make_proxy()
    for _ in range(3):
        sock = _raw(proxy)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n")
        sock.sendall(b"u" * 300_000)
        response = b""
        while chunk := sock.recv(65536):  # ConnectionResetError here is the bug
            response += chunk
        assert response.startswith(b"HTTP/1.1 503 ")
        sock.close()


def test_dead_backend_502(make_proxy):
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seen: list[str] = []

    class Observer:
        def request_done(self, status, seconds, backend_label):
            seen.append(f"done {status} {backend_label}")

        def upstream_error(self, kind):
            seen.append(kind)

    # A refused connect may be a child that just died: the request is held and the backend
    # tried again with a growing back-off until the hold deadline (Caddy's lb_try_duration).
    proxy = make_proxy(Backend("127.0.0.1", port, "ghost"), observer=Observer(), hold_seconds=0.5)
    started = time.monotonic()
    status, _, _ = _get(proxy, "/")
    elapsed = time.monotonic() - started
    assert status == 502
    assert 0.4 < elapsed < 5
    assert _wait_until(lambda: seen[-1:] == ["done 502 ghost"])  # reported after the answer
    tries = seen[:-1]
    assert set(tries) == {"connect"}
    assert 2 <= len(tries) <= 10, f"retried with a back-off, not spinning: {len(tries)}"
    assert proxy.held_count == 0


def test_backend_closing_before_answer_502(make_backend, make_proxy):
    proxy = make_proxy(make_backend().backend)
    assert _get(proxy, "/close-early")[0] == 502


def test_slow_backend_504(make_backend, make_proxy):
    proxy = make_proxy(make_backend().backend, backend_timeout=0.5)
    started = time.monotonic()
    assert _get(proxy, "/sleep?s=5")[0] == 504
    assert time.monotonic() - started < 4
    assert _get(proxy, "/version")[0] == 200, "the proxy still works afterwards"


def test_stale_pooled_connection_is_retried_for_get_not_for_post(make_backend, make_proxy):
    backend = make_backend()
    proxy = make_proxy(backend.backend)
    conn = _client(proxy)
    for _ in range(3):  # each reuse finds the pooled connection dropped: retried on a new one
        conn.request("GET", "/flaky")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"fresh")
    conn.request("POST", "/flaky", body=b"not idempotent")
    assert conn.getresponse().status == 502, "a POST is never sent twice"
    conn.close()


BAD_REQUESTS = {
    "cl-and-te": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "differing-cl": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "cl-list": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
    "cl-plus": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd", 400),
    "cl-hex": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0x4\r\n\r\nabcd", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n", 400),
    "bare-lf": (b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400),
    "bad-request-line": (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "te-gzip": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    "te-not-last": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    "te-in-http10": (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "http2": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "connect": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    "bad-chunk-size": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nab\r\n0\r\n\r\n",
        400,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_malformed_and_ambiguous_requests_are_refused(case, make_backend, make_proxy):
    payload, status = BAD_REQUESTS[case]
    backend = make_backend()
    proxy = make_proxy(backend.backend)
    sock = _raw(proxy)
    sock.sendall(payload)
    answer = _read_all(sock)  # the proxy closes after refusing
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    if case != "bad-chunk-size":  # that one is only found while streaming the body
        assert backend.requests == 0, "nothing ambiguous reaches the backend"


def test_oversized_head_431(make_backend, make_proxy):
    backend = make_backend()
    proxy = make_proxy(backend.backend, max_header_bytes=4096)
    for head in (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000,  # never even ends
    ):
        sock = _raw(proxy)
        sock.sendall(head)
        assert _read_all(sock).startswith(b"HTTP/1.1 431 ")
    assert backend.requests == 0


def test_a_hostile_whitespace_head_does_not_freeze_the_proxy(make_backend, make_proxy):
    """64,000 spaces inside a header value cost seconds of CPU under the GIL with a
    backtracking parser, and every other client waited. Parsing is linear now."""
    proxy = make_proxy(make_backend("v1").backend)
    value = b"a" + b" " * 64_000 + b"b"
    hostile = []
    for _ in range(3):
        sock = _raw(proxy)
        sock.sendall(b"GET /headers HTTP/1.1\r\nHost: x\r\nX: " + value + b"\r\n\r\n")
        hostile.append(sock)
    worst = 0.0
    for _ in range(10):  # fresh clients while the hostile heads are being handled
        started = time.monotonic()
        assert _get(proxy, "/version")[:2] == (200, b"v1")
        worst = max(worst, time.monotonic() - started)
    print(f"slowest fresh GET next to 3 hostile heads: {worst * 1000:.1f} ms")
    assert worst < 1.0, f"a fresh GET waited {worst:.2f} s"
    for sock in hostile:
        response = b""
        while b"]]" not in response:
            chunk = sock.recv(65536)
            assert chunk, "the hostile (but valid) request was answered"
            response += chunk
        assert response.startswith(b"HTTP/1.1 200 ")
        fields = json.loads(response.partition(b"\r\n\r\n")[2])
        assert ["X", value.decode()] in fields, "inner whitespace is passed on verbatim"
        sock.close()


def test_slow_loris_is_cut_off_while_others_are_served(make_backend, make_proxy):
    proxy = make_proxy(make_backend("v1").backend, header_timeout=0.5, workers=2)
    trickler = _raw(proxy)
    trickler.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    silent = [_raw(proxy) for _ in range(5)]  # connect and say nothing at all
    started = time.monotonic()
    for _ in range(3):
        assert _get(proxy, "/version")[:2] == (200, b"v1")
    assert time.monotonic() - started < 2, "idle and slow clients hold no worker"
    answer = _read_all(trickler)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 5
    for sock in silent:
        assert _read_all(sock) == b"", "a silent connection is closed"


def test_an_empty_line_between_requests_is_ignored_not_timed_out(make_backend, make_proxy):
    """RFC 9112 2.2: a CRLF before a request line (some clients send one after a body) is
    ignored. It used to start a request head, so the header timeout sent an unasked 408
    on an idle keep-alive connection."""
    proxy = make_proxy(make_backend("v1").backend, header_timeout=0.3, client_idle_timeout=5)
    sock = _raw(proxy)
    request = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
    sock.sendall(request)
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"\r\n")
    assert not _wait_readable(sock, 1.0), "nothing is sent for an empty line"
    sock.sendall(b"\r\n" + request)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 "), "the connection still serves"
    sock.close()


def test_empty_lines_do_not_keep_an_idle_connection_open(make_backend, make_proxy):
    """Skipped empty lines are no request: one every 0.3 s restarted the idle timeout, so a
    client could hold a connection for ever without asking anything."""
    proxy = make_proxy(make_backend("v1").backend, client_idle_timeout=1)
    sock = _raw(proxy)
    sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    started = time.monotonic()
    closed = False
    while not closed and time.monotonic() - started < 4:
        try:
            sock.sendall(b"\r\n")
        except OSError:
            closed = True
            break
        closed = _wait_readable(sock, 0.3) and sock.recv(65536) == b""
    assert closed and time.monotonic() - started < 2.5, "closed at its idle timeout"
    sock.close()


def test_many_idle_connections_do_not_block_a_fresh_client(make_backend, make_proxy):
    proxy = make_proxy(make_backend("v1").backend, workers=4)
    idle = []
    try:
        for i in range(320):
            sock = _raw(proxy)
            if i % 2 == 0:  # half have been served and now idle in keep-alive
                sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(sock)
        for sock in idle[::2]:
            response = b""
            while not response.endswith(b"v1"):
                response += sock.recv(4096)
        started = time.monotonic()
        assert _get(proxy, "/version")[:2] == (200, b"v1")
        assert time.monotonic() - started < 1.0
    finally:
        for sock in idle:
            sock.close()


def test_kept_alive_clients_pausing_between_requests_keep_their_connection(
    make_backend, make_proxy
):
    """A worker waits a moment (a kernel receive timeout) for a client's next request, then
    parks it: a pause after that moment is an idle keep-alive one, not a slow head."""
    proxy = make_proxy(make_backend("v1").backend, workers=1, header_timeout=0.3)
    sock = _raw(proxy)
    try:
        for pause in (0.0, 0.001, 0.01, 0.8, 0.0):
            time.sleep(pause)
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while not response.endswith(b"v1"):
                data = sock.recv(4096)
                assert data, f"closed after a pause of {pause} s"
                response += data
            assert response.startswith(b"HTTP/1.1 200")
        # Meanwhile the one worker is free for others.
        assert _get(proxy, "/version")[:2] == (200, b"v1")
    finally:
        sock.close()


def test_client_vanishing_mid_response_closes_the_upstream_connection(make_backend, make_proxy):
    backend = make_backend("v1")
    proxy = make_proxy(backend.backend)
    sock = _raw(proxy)
    sock.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
    received = 0
    while received < 200_000:
        received += len(sock.recv(65536))
    sock.close()
    assert backend.server.write_failed.wait(TIMEOUT), "the proxy closed the backend connection"
    assert _get(proxy, "/version")[:2] == (200, b"v1")


def test_client_vanishing_mid_request_body(make_backend, make_proxy):
    backend = make_backend("v1")
    proxy = make_proxy(backend.backend)
    sock = _raw(proxy)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"z" * 1000)
    sock.close()
    assert _get(proxy, "/version")[:2] == (200, b"v1")
    assert _wait_until(lambda: backend.server.open_connections <= 1)


def _slow_body_client(proxy: ReverseProxy, length: int, first: bytes = b"z") -> socket.socket:
    sock = _raw(proxy)
    sock.sendall(
        f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode() + first
    )
    return sock


def test_slow_request_bodies_hold_no_worker(make_backend, make_proxy):
    """200 clients trickling a 1 MB body a byte at a time (they took every worker when a
    worker read each body): the parker receives them; a fresh GET is answered at once."""
    proxy = make_proxy(make_backend("v1").backend)  # 64 workers, as in the report
    slow = []
    try:
        for _ in range(200):
            slow.append(_slow_body_client(proxy, 1_000_000))
        worst = 0.0
        for _ in range(5):
            for sock in slow:  # one more byte each, as the attack does
                sock.sendall(b"z")
            started = time.monotonic()
            assert _get(proxy, "/version")[:2] == (200, b"v1")
            worst = max(worst, time.monotonic() - started)
        print(f"slowest fresh GET next to 200 slow bodies: {worst * 1000:.1f} ms")
        assert worst < 1.0, f"a fresh GET waited {worst:.2f} s"
        assert _wait_until(lambda: proxy.buffered_body_bytes == 200 * 6)
    finally:
        for sock in slow:
            sock.close()
    assert _wait_until(lambda: proxy.buffered_body_bytes == 0), "closed bodies leave the budget"


def test_slow_buffered_body_gets_408(make_backend, make_proxy):
    backend = make_backend("v1")
    proxy = make_proxy(backend.backend, body_timeout=0.3, body_min_rate=1000)
    sock = _slow_body_client(proxy, 5000, b"z" * 100)
    started = time.monotonic()
    assert _read_all(sock).startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 5
    assert backend.requests == 0, "an incomplete body never reaches the backend"
    assert proxy.buffered_body_bytes == 0


def test_streamed_body_below_the_minimum_rate_gets_408(make_backend, make_proxy):
    """A body past the buffer cap is streamed by a worker, which does not wait for ever."""
    proxy = make_proxy(
        make_backend("v1").backend,
        max_buffered_body=1024,
        body_timeout=0.5,
        body_min_rate=20_000,
        workers=2,
    )
    sock = _slow_body_client(proxy, 100_000)
    started = time.monotonic()
    answer = b""
    while not answer:  # a byte every 50 ms: 20 B/s, far below the minimum
        with contextlib.suppress(OSError):
            sock.sendall(b"z")
        if _wait_readable(sock, 0.05):
            answer = _read_all(sock)
        assert time.monotonic() - started < 5, "the slow body was not cut off"
    assert answer.startswith(b"HTTP/1.1 408 ")
    print(f"slow streamed body refused after {time.monotonic() - started:.2f} s")
    # A fast streamed body on the same proxy is fine.
    conn = _client(proxy)
    body = b"q" * 3_000_000
    conn.request("POST", "/echo", body=body)
    assert conn.getresponse().read() == body
    conn.close()


def test_total_buffer_cap_streams_the_rest_and_frees_its_budget(make_backend, make_proxy):
    backend = make_backend("v1")
    proxy = make_proxy(backend.backend, max_buffered_total=10_000, workers=3)
    first = _slow_body_client(proxy, 8000, b"a" * 6000)
    assert _wait_until(lambda: proxy.buffered_body_bytes == 6000)
    second = _slow_body_client(proxy, 8000, b"b" * 6000)  # over the total: a worker streams it
    assert _wait_until(lambda: proxy.buffered_body_bytes == 6000)
    assert _get(proxy, "/version")[:2] == (200, b"v1"), "workers remain for others"
    for sock, byte in ((first, b"a"), (second, b"b")):
        sock.sendall(byte * 2000)
        response = b""
        while not response.endswith(byte * 8000):
            chunk = sock.recv(65536)
            assert chunk, f"closed early: {response[:80]!r}"
            response += chunk
        assert response.startswith(b"HTTP/1.1 200 ")
        sock.close()
    assert proxy.buffered_body_bytes == 0


def test_a_body_arriving_with_its_head_cannot_take_the_total_past_its_cap() -> None:
    """The cap counts the bytes of the body at hand: 6,000 buffered, 6,000 more arriving in
    the same packet as their head would make 12,000 against a cap of 10,000: streamed."""
    from trayupdater.http11 import Framing, parse_request_head
    from trayupdater.proxy.bodies import Bodies
    from trayupdater.proxy.clients import Client
    from trayupdater.proxy.plan import Plan

    bodies = Bodies(max_body=1 << 20, max_total=10_000, timeout=5.0, min_rate=500, max_trailer=1024)
    head = parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8000\r\n\r\n")
    a, b = socket.socketpair()
    with a, b:
        first, second = Client(a, "127.0.0.1", 0.0), Client(b, "127.0.0.1", 0.0)
        plans = [Plan(head, "", Framing.LENGTH, 8000, 0.0) for _ in range(2)]
        first.buf += b"a" * 6000
        assert not bodies.ready(first, plans[0])
        bodies.begin_wait(first, plans[0])  # the dispatcher receives the rest
        assert bodies.buffered_bytes == 6000
        second.buf += b"b" * 6000
        assert bodies.ready(second, plans[1]) and plans[1].stream
        assert bodies.buffered_bytes == 6000


def test_chunked_body_is_received_before_a_worker_takes_it(make_backend, make_proxy):
    proxy = make_proxy(make_backend("v1").backend, workers=1)
    sock = _raw(proxy)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    # The only worker is free for someone else while the chunked body trickles in.
    assert _get(proxy, "/version")[:2] == (200, b"v1")
    for piece in (b"lo\r\n", b"6\r\n wor", b"ld\r\n0\r\n", b"X-T: 1\r\n", b"\r\n"):
        sock.sendall(piece)
        assert _get(proxy, "/version")[:2] == (200, b"v1")
    response = b""
    while not response.endswith(b"hello world"):
        chunk = sock.recv(4096)
        assert chunk, f"closed early: {response!r}"
        response += chunk
    assert response.startswith(b"HTTP/1.1 200 ")
    sock.close()


def _thread_cpu_seconds(name: str) -> float:
    """CPU time so far of this process's thread called ``name`` (Linux /proc)."""
    thread = next(t for t in threading.enumerate() if t.name == name)
    with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="per-thread CPU from /proc")
def test_a_body_of_tiny_chunks_is_no_work_for_the_dispatcher(make_backend, make_proxy):
    """A megabyte of one-byte chunks is 170,000 chunks: walked by the dispatcher, one client
    stalled every other for most of a second (probe GETs waited 750 ms). Past a few hundred
    chunks the body is a worker's: decoded as it streams, while the dispatcher serves on."""
    proxy = make_proxy(make_backend("v1").backend)
    assert _get(proxy, "/version")[:2] == (200, b"v1")
    before = _thread_cpu_seconds("proxy-dispatcher")
    chunks = 60_000
    sock = _raw(proxy)
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + b"1\r\nx\r\n" * chunks + b"0\r\n\r\n"
    )
    head, _, body = _read_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"x" * chunks, "served in full"
    spent = _thread_cpu_seconds("proxy-dispatcher") - before
    assert spent < 0.1, f"the dispatcher spent {spent:.2f} s of CPU on one request's chunks"


def test_upgrade_tunnels_bytes_both_ways(make_backend, make_proxy):
    proxy = make_proxy(make_backend().backend)
    sock = _raw(proxy)
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"upgrade: websocket" in head.lower()
    for message in (b"hello", b"tunnel " * 1000):
        sock.sendall(message)
        echoed = b""
        while len(echoed) < len(message):
            echoed += sock.recv(65536)
        assert echoed == message.upper()
    sock.shutdown(socket.SHUT_WR)
    assert _read_all(sock) == b""


def test_failing_observer_does_not_break_requests(make_backend, make_proxy):
    class Broken:
        def request_done(self, status, seconds, backend_label):
            raise RuntimeError("metrics bug")

        def upstream_error(self, kind):
            raise RuntimeError("metrics bug")

    proxy = make_proxy(make_backend("v1").backend, observer=Broken())
    conn = _client(proxy)
    for _ in range(3):
        conn.request("GET", "/version")
        assert conn.getresponse().read() == b"v1"
    conn.close()


# -- switching -----------------------------------------------------------------------------------


def test_drain_waits_for_in_flight_requests_and_drops_the_old_pool(make_backend, make_proxy):
    old, new = make_backend("old"), make_backend("new")
    proxy = make_proxy(old.backend)
    assert _get(proxy, "/version")[1] == b"old"  # leaves a pooled connection to `old`
    results: list[bytes] = []
    slow = threading.Thread(target=lambda: results.append(_get(proxy, "/sleep?s=1")[1]))
    slow.start()
    assert _wait_until(lambda: old.requests == 2)  # the slow request is in flight
    generation = proxy.switch(new.backend)
    assert generation.backend == old.backend
    assert generation.in_flight == 1
    assert _get(proxy, "/version")[1] == b"new", "new requests go to the new backend at once"
    assert proxy.drain(generation, timeout=0.05) is False
    assert proxy.drain(generation, timeout=TIMEOUT) is True
    slow.join(TIMEOUT)
    assert results == [b"slept"]
    assert _wait_until(lambda: old.server.open_connections == 0), "old pool closed"


def test_zero_failed_requests_across_many_switches_under_load(make_backend, make_proxy):
    """The update flow 22 times under keep-alive load: start new, switch, drain, kill old."""
    current = make_backend("v0")
    proxy = make_proxy(current.backend)
    stop = threading.Event()
    failures: list[str] = []
    served: dict[str, int] = {}
    lock = threading.Lock()

    def client(index: int) -> None:
        conn = _client(proxy)
        body = f"client {index}".encode()
        while not stop.is_set():
            try:
                conn.request("GET", "/version")
                response = conn.getresponse()
                label = response.read().decode()
                if response.status != 200:
                    failures.append(f"GET {response.status} {label!r}")
                    continue
                conn.request("POST", "/echo", body=body)
                response = conn.getresponse()
                if response.status != 200 or response.read() != body:
                    failures.append(f"POST {response.status}")
                with lock:
                    served[label] = served.get(label, 0) + 1
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
                conn.close()
                conn = _client(proxy)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    try:
        assert _wait_until(lambda: current.requests >= 20)
        for version in range(1, 23):
            new = make_backend(f"v{version}")
            old_generation = proxy.switch(new.backend)
            assert proxy.drain(old_generation, timeout=TIMEOUT), "old generation drained"
            current.close()  # the old child is stopped right after the drain
            current = new
            # Let each generation serve real traffic before the next switch.
            assert _wait_until(lambda n=new: n.requests >= 20)
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)
    assert failures == []
    assert len(served) == 23, f"every backend served traffic: {served}"


# -- lifecycle ---------------------------------------------------------------------------------


def test_port_taken_raises_a_clear_oserror(make_proxy):
    first = make_proxy()
    port = first.address[1]
    second = ReverseProxy("127.0.0.1", port)
    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        second.start()


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="workers"):
        ReverseProxy(workers=0)
    with pytest.raises(ConfigError, match="header_timeout"):
        ReverseProxy(header_timeout=0)
    with pytest.raises(TypeError, match="Backend"):
        ReverseProxy().switch(("127.0.0.1", 80))  # type: ignore[arg-type]


def test_listening_socket_handover_keeps_the_port_serving(make_backend, make_proxy):
    backend = make_backend("v1")
    first = make_proxy(backend.backend)
    address = first.address
    second = ReverseProxy(sock=first.listening_socket().dup())
    second.start()
    try:
        second.switch(backend.backend)
        first.close()
        assert second.address == address
        assert _get(second, "/version")[:2] == (200, b"v1")
    finally:
        second.close()


def test_close_lets_in_flight_requests_finish_and_stops_threads(make_backend):
    backend = make_backend("v1")
    proxy = ReverseProxy("127.0.0.1", 0, workers=4)
    proxy.start()
    proxy.switch(backend.backend)
    results: list[tuple[int, bytes]] = []
    slow = threading.Thread(target=lambda: results.append(_get(proxy, "/sleep?s=0.5")[:2]))
    slow.start()
    assert _wait_until(lambda: backend.server.connections == 1)
    before = threading.active_count()
    proxy.close()
    slow.join(TIMEOUT)
    assert results == [(200, b"slept")]
    assert threading.active_count() <= before - 5, "selector and worker threads stopped"
    with pytest.raises(OSError):
        socket.create_connection(proxy.address, timeout=1).close()


def _syn_sent_to(port: int) -> int:
    """Connections of this machine still waiting for their SYN's answer, to ``port``."""
    count = 0
    with open("/proc/net/tcp") as table:
        lines = table.read().splitlines()[1:]
    for line in lines:
        fields = line.split()
        remote, state = fields[2], fields[3]
        count += state == "02" and int(remote.split(":")[1], 16) == port
    return count


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket table")
def test_a_burst_of_requests_opens_a_few_connections_at_a_time(make_proxy):
    """A backend whose accept queue is full drops further SYNs (each costs its client a
    second or more): 40 requests at once on an empty pool are not 40 connects at once."""
    from trayupdater.proxy.upstream import MAX_CONNECTING

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # and never accepts: past two, connects hang in SYN_SENT
    port = listener.getsockname()[1]
    proxy = make_proxy(Backend("127.0.0.1", port, "full"), workers=64, backend_timeout=3.0)
    clients = [_raw(proxy) for _ in range(40)]
    for sock in clients:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _wait_until(lambda: _syn_sent_to(port) >= 1)
    time.sleep(0.3)  # every request had its chance to connect by now
    assert 1 <= _syn_sent_to(port) <= MAX_CONNECTING
    listener.close()
    for sock in clients:
        sock.close()


def test_a_request_waiting_for_a_turn_to_connect_times_out_with_504(make_proxy):
    """Connects that never finish hold every turn: the requests waiting for one get 504
    after the backend timeout, like a connect that timed out, instead of waiting forever."""
    from trayupdater.proxy.upstream import MAX_CONNECTING

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # never accepts: past two, connects hang in SYN_SENT
    port = listener.getsockname()[1]
    proxy = make_proxy(Backend("127.0.0.1", port, "full"), backend_timeout=1.0)
    clients = [_raw(proxy) for _ in range(MAX_CONNECTING + 6)]
    started = time.monotonic()
    for sock in clients:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    statuses = []
    for sock in clients:
        answer = _read_all(sock)
        statuses.append(int(answer.split(b" ", 2)[1]) if answer else None)
        sock.close()
    # About one backend timeout (plus the deadline scan's step), not one to connect after
    # another that timed out first (2 s and more).
    assert time.monotonic() - started < 1.8
    assert set(statuses) == {504}, statuses
    listener.close()


def test_a_connection_waiting_its_turn_is_served_when_a_worker_closes_one(make_backend, make_proxy):
    """``workers`` requests in flight at most: a third waits in the backlog, and goes as
    soon as one of them ends, even when that one ends in a worker with a close."""
    proxy = make_proxy(make_backend("v1").backend, workers=2, max_buffered_body=1000)
    streams = []
    for _ in range(2):  # streamed bodies (workers), answered after 0.5 s, then closed
        sock = _raw(proxy)
        sock.sendall(
            b"PUT /sleep?s=0.5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: 300000\r\n\r\n" + b"z" * 300_000
        )
        streams.append(sock)
    time.sleep(0.2)  # both in flight
    started = time.monotonic()
    assert _get(proxy, "/version")[:2] == (200, b"v1")
    assert time.monotonic() - started < 3.0
    for sock in streams:
        assert _read_all(sock).startswith(b"HTTP/1.1 200 ")
        sock.close()


def test_a_failure_handling_one_connection_closes_it_and_spares_the_rest(
    make_backend, make_proxy, monkeypatch
):
    """A bug met while the dispatcher handles one connection (here: receiving a request
    body) closes that connection; the dispatcher, and the proxy, go on serving."""
    from trayupdater.proxy import bodies as bodies_module

    def failing(self, conn):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")  # only this test's one request body comes here

    monkeypatch.setattr(bodies_module.Bodies, "receive", failing)
    proxy = make_proxy(make_backend("v1").backend)
    sock = _raw(proxy)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    time.sleep(0.2)  # parked for its body
    sock.sendall(b"boom")
    # Closed; with the client's bytes unread the close may arrive as a reset.
    with contextlib.suppress(ConnectionResetError):
        assert _read_all(sock) == b"", "the connection the failure was about is closed"
    for _ in range(3):
        assert _get(proxy, "/version")[:2] == (200, b"v1")


def test_a_wakeup_tells_its_waiter_once_and_skips_one_that_gave_up() -> None:
    from trayupdater.proxy.steps import Wakeup

    told: list[int] = []
    early = Wakeup()
    assert early.fire()
    assert early.on_fire(lambda: told.append(1))  # fired already: no call, go on at once
    late = Wakeup()
    assert not late.on_fire(lambda: told.append(2))
    assert late.fire() and told == [2]
    assert not late.fire()  # once
    gave_up = Wakeup()
    assert not gave_up.on_fire(lambda: told.append(3))
    gave_up.cancel()
    assert not gave_up.fire() and told == [2]  # the pool tells the next waiter instead
    started = time.monotonic()
    assert not Wakeup().wait(0.05) and time.monotonic() - started >= 0.05
    fired = Wakeup()
    threading.Timer(0.02, fired.fire).start()
    assert fired.wait(TIMEOUT)


def test_a_thousand_concurrent_connections_all_get_served(make_backend, make_proxy):
    """1,000 clients each send a request at once: every one is answered, and a fresh
    client is still served (idle keep-alive sockets are parked, not holding threads)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2500:
        pytest.skip("needs ~2,500 file descriptors (client and proxy side in one process)")
    proxy = make_proxy(make_backend("v1").backend)
    clients = []
    try:
        for _ in range(1000):
            clients.append(_raw(proxy))
        for sock in clients:
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = 0
        for sock in clients:
            response = b""
            while not response.endswith(b"v1"):
                chunk = sock.recv(4096)
                assert chunk, "connection closed without an answer"
                response += chunk
            assert response.startswith(b"HTTP/1.1 200 ")
            answered += 1
        assert answered == 1000
        # All 1,000 now sit idle in keep-alive; a newcomer is served promptly.
        started = time.monotonic()
        assert _get(proxy, "/version")[:2] == (200, b"v1")
        assert time.monotonic() - started < 2.0
    finally:
        for sock in clients:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
