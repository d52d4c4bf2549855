"""The proxy's speed-ups, which must never change an answer, and its idle behaviour.

Heads parsed once and remembered (heads.py): a remembered head must not carry one client's
address to another, and a remembered response head must still get the Connection handling
of each client's HTTP version. Busy polling by a lone worker must not start while other
requests are in flight (it would take the GIL from them). Idle, the parker must not wake.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from proxy_support import TIMEOUT, RealBackend
from proxy_support import get as _get
from proxy_support import read_all as _read_all

from trayupdater.http11 import HttpError
from trayupdater.proxy import Backend, ReverseProxy, heads, relay, sockets

REQUEST = b"GET /headers HTTP/1.1\r\nHost: example.test\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\n"


@pytest.fixture
def backend() -> Iterator[RealBackend]:
    server = RealBackend("v1")
    yield server
    server.close()


@pytest.fixture
def proxy(backend: RealBackend) -> Iterator[ReverseProxy]:
    with ReverseProxy("127.0.0.1", 0) as proxy:
        proxy.switch(backend.backend)
        yield proxy


# -- the caches ----------------------------------------------------------------------------


def test_a_repeated_request_head_is_parsed_once() -> None:
    first = heads.inbound(REQUEST)
    assert heads.inbound(bytes(REQUEST)) is first  # equal bytes, not the same object
    assert first.upstream_head("10.0.0.1") != first.upstream_head("10.0.0.2")
    assert "X-Forwarded-For: 10.0.0.2\r\n" in first.upstream_head("10.0.0.2")


def test_a_large_head_is_not_remembered() -> None:
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * heads.CACHE_HEAD_BYTES + b"\r\n\r\n"
    before = heads._inbound_cached.cache_info().currsize
    assert heads.inbound(big) is not heads.inbound(big)
    assert heads._inbound_cached.cache_info().currsize == before


def test_a_refused_head_is_refused_every_time() -> None:
    bad = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    for _ in range(2):
        with pytest.raises(HttpError) as caught:
            heads.inbound(bad)
        assert caught.value.status == 400


def test_a_repeated_response_head_is_parsed_once_per_kind_of_request() -> None:
    get = heads.outbound(RESPONSE, head_request=False)
    assert heads.outbound(bytes(RESPONSE), head_request=False) is get
    assert heads.outbound(RESPONSE, head_request=True) is not get  # a HEAD has no body
    assert get.framing is not None and get.length == 2
    assert heads.outbound(RESPONSE, head_request=True).length == 0


def test_the_client_head_follows_each_clients_version_and_wish() -> None:
    response = heads.outbound(RESPONSE, head_request=False)
    kept, keep, _ = response.client_head(1, True)
    assert keep and b"Connection" not in kept and b"X-Kept: yes\r\n" in kept
    closed, keep, _ = response.client_head(1, False)
    assert not keep and b"Connection: close\r\n" in closed
    old, keep, _ = response.client_head(0, True)
    assert keep and b"Connection: keep-alive\r\n" in old
    assert response.client_head(1, True)[0] is kept  # remembered too


# -- through the proxy -----------------------------------------------------------------------


def _headers_seen_by_backend(proxy: ReverseProxy, source_ip: str) -> dict[str, str]:
    sock = socket.socket()
    sock.settimeout(TIMEOUT)
    sock.bind((source_ip, 0))
    sock.connect(proxy.address)
    sock.sendall(REQUEST.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1))
    answer = _read_all(sock)
    sock.close()
    body = answer.split(b"\r\n\r\n", 1)[1]
    return {name.lower(): value for name, value in json.loads(body)}


def test_the_same_head_from_two_clients_names_each_client(proxy: ReverseProxy) -> None:
    # One remembered head, two addresses: each backend request names its own client.
    assert _headers_seen_by_backend(proxy, "127.0.0.1")["x-forwarded-for"] == "127.0.0.1"
    assert _headers_seen_by_backend(proxy, "127.0.0.2")["x-forwarded-for"] == "127.0.0.2"
    assert _headers_seen_by_backend(proxy, "127.0.0.1")["x-forwarded-for"] == "127.0.0.1"


class _FixedBackend:
    """Answers every request with the same bytes: one remembered response head."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.backend = Backend("127.0.0.1", self.listener.getsockname()[1], "fixed")
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buf = b""
        with sock:
            while data := sock.recv(65536):
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    sock.sendall(RESPONSE + b"ok")


def test_one_response_head_answers_clients_of_every_version() -> None:
    fixed = _FixedBackend()
    proxy = ReverseProxy("127.0.0.1", 0)
    proxy.start()
    proxy.switch(fixed.backend)
    try:
        cases = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, True),
            (b"GET / HTTP/1.0\r\n\r\n", b"close", False),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", b"keep-alive", True),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"close", False),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None, True),
        ]
        for request, connection, stays_open in cases:
            sock = socket.create_connection(proxy.address, TIMEOUT)
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-Kept: yes\r\n" in head
            lines = head.lower().split(b"\r\n")
            found = [
                line.split(b":", 1)[1].strip() for line in lines if line.startswith(b"connection:")
            ]
            assert found == ([connection] if connection else []), request
            sock.settimeout(0.5 if stays_open else TIMEOUT)
            rest = head.split(b"\r\n\r\n", 1)[1]
            try:
                while len(rest) < 2 or not stays_open:
                    data = sock.recv(65536)
                    if not data:
                        break
                    rest += data
            except TimeoutError:
                pass
            assert rest == b"ok", request
            sock.close()
    finally:
        proxy.close()
        fixed.listener.close()


# -- busy polling ------------------------------------------------------------------------------


def test_spin_recv_returns_what_arrives_within_the_window() -> None:
    a, b = socket.socketpair()
    with a, b:
        threading.Timer(0.002, b.sendall, (b"hi",)).start()
        assert sockets.spin_recv(a, 1.0) == b"hi"
        started = time.perf_counter()
        assert sockets.spin_recv(a, 0.005) is None  # nothing came: gave up after its window
        assert time.perf_counter() - started >= 0.005
        b.close()
        assert sockets.spin_recv(a, 1.0) == b""  # EOF


def test_spin_recv_raises_a_reset() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    server.close()  # linger 0: RST
    with pytest.raises(ConnectionResetError):
        sockets.spin_recv(client, 1.0)
    client.close()
    listener.close()


@pytest.mark.skipif(not sockets.SPIN_SECONDS, reason="no busy polling on this platform")
def test_only_a_lone_request_busy_polls(
    proxy: ReverseProxy, backend: RealBackend, monkeypatch
) -> None:
    spins: list[str] = []
    real = relay.spin_fill

    def counting(conn, seconds):
        spins.append(threading.current_thread().name)
        real(conn, seconds)

    monkeypatch.setattr(relay, "spin_fill", counting)
    assert _get(proxy, "/version")[0] == 200
    assert len(spins) == 1, "a lone request polls for its answer"

    spins.clear()
    slow = threading.Thread(target=_get, args=(proxy, "/sleep?s=1.5"))
    slow.start()
    deadline = time.monotonic() + TIMEOUT
    while backend.requests < 2 and time.monotonic() < deadline:  # the slow one is in flight
        time.sleep(0.005)
    spins.clear()  # the slow request itself may have polled: it was alone then
    assert _get(proxy, "/version")[0] == 200
    assert spins == [], "with another request in flight nobody polls"
    slow.join(TIMEOUT)


# -- idle ---------------------------------------------------------------------------------------


def test_the_parker_sleeps_while_nothing_is_parked(proxy: ReverseProxy) -> None:
    """No connection to watch: no scan, no wake-up (idle CPU of the app)."""
    parker = proxy._parker
    assert parker is not None
    real = parker._sel.select
    calls: list[float | None] = []

    def counting(timeout=None):
        calls.append(timeout)
        return real(timeout)

    parker._sel.select = counting  # type: ignore[method-assign]
    time.sleep(0.3)
    calls.clear()
    time.sleep(proxy._scan_every * 2.5)
    assert calls == [], "woke up with nothing parked"
    sock = socket.create_connection(proxy.address, TIMEOUT)  # parked: now it scans
    assert _get(proxy, "/version")[0] == 200
    time.sleep(proxy._scan_every * 1.5)
    assert calls and calls[-1] is not None
    sock.close()
