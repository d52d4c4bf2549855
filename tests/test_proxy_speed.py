"""The proxy's speed-ups, which must never change an answer, and its idle behaviour.

Heads parsed once and remembered (heads.py): a remembered head must not carry one client's
address to another, and a remembered response head must still get the Connection handling
of each client's HTTP version. Busy polling by a lone worker must not start while other
requests are in flight (it would take the GIL from them). Idle, the dispatcher must not wake.
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
from proxy_support import open_client as _client
from proxy_support import read_all as _read_all

from trayupdater.http11 import HttpError
from trayupdater.proxy import Backend, ReverseProxy, heads, relay, sockets, steps

REQUEST = b"GET /headers HTTP/1.1\r\nHost: example.test\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\n"


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


def _drive_reading_while_waiting(gen, up_peer: socket.socket, parts: list[bytes]):
    """Run a relay generator as a busy-polling worker does: at each wait the backend sends
    the next part and the driver reads it into the buffer itself."""
    try:
        step = next(gen)
        while True:
            assert step is not None
            up_peer.sendall(parts.pop(0))
            time.sleep(0.05)
            step.buf += step.sock.recv(65536)
            step = gen.send(None)
    except StopIteration as stop:
        return stop.value


def test_an_answer_read_while_waiting_is_not_read_again() -> None:
    """A worker that busy-polled a backend's answer into the buffer hands the generator an
    answer that is complete: it must not block on a read for more (it stalled until the
    backend timeout, 504, when a lone client's fast backend answered within the poll)."""
    from trayupdater.http11 import BufferedSocket, parse_request_head
    from trayupdater.proxy.clients import Client
    from trayupdater.proxy.observer import NullObserver, Reporter
    from trayupdater.proxy.retry import AttemptFailed
    from trayupdater.proxy.summary import LogSummary

    up, up_peer = socket.socketpair()
    client, client_peer = socket.socketpair()
    with up, up_peer, client, client_peer:
        sockets.blocking_with_timeouts(up, 0.5)  # a read past the answer would time out
        reporter = Reporter(NullObserver(), LogSummary(__import__("logging").getLogger("t")))
        req = parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        gen = relay.Relay(reporter, 65536).read_response(
            Client(client, "127.0.0.1", 0.0), BufferedSocket(up), req, False, "v1"
        )
        # The head and one body byte, then the last body byte: both waits are satisfied by
        # the driver's own read.
        parts = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no", b"k"]
        try:
            answer = _drive_reading_while_waiting(gen, up_peer, parts)
        except AttemptFailed as exc:
            pytest.fail(f"read again after the driver read the answer: {exc}")
        assert not isinstance(answer, int) and answer.status == 200


def _streamed_put(proxy: ReverseProxy) -> int:
    """A request whose body is too large to buffer: a worker streams it, then waits for the
    answer (which takes the backend a moment, so there is something to wait for)."""
    conn = _client(proxy)
    try:
        conn.request("PUT", "/sleep?s=0.05", body=b"b" * 1_000_000)  # more than one read
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.skipif(not sockets.SPIN_SECONDS, reason="no busy polling on this platform")
def test_a_worker_busy_polls_only_for_the_only_request_in_flight(
    backend: RealBackend, monkeypatch
) -> None:
    from trayupdater.proxy import workers

    spins: list[str] = []
    real = workers.spin_fill

    def counting(conn, seconds):
        spins.append(threading.current_thread().name)
        real(conn, seconds)

    monkeypatch.setattr(workers, "spin_fill", counting)
    with ReverseProxy("127.0.0.1", 0, max_buffered_body=1000) as proxy:
        proxy.switch(backend.backend)
        assert _streamed_put(proxy) == 200
        assert spins, "a lone request polls for its answer"

        slow = threading.Thread(target=_get, args=(proxy, "/sleep?s=1.5"))
        slow.start()
        deadline = time.monotonic() + TIMEOUT
        while backend.requests < 2 and time.monotonic() < deadline:  # the slow one's in flight
            time.sleep(0.005)
        spins.clear()
        assert _streamed_put(proxy) == 200
        assert spins == [], "with another request in flight nobody polls"
        slow.join(TIMEOUT)


@pytest.mark.skipif(not sockets.SPIN_SECONDS, reason="no busy polling on this platform")
def test_the_dispatcher_busy_polls_only_while_no_worker_works(proxy: ReverseProxy) -> None:
    """Polling holds the GIL a worker needs: the dispatcher polls only when none works."""
    dispatcher = proxy._dispatcher
    assert dispatcher is not None
    spins: list[float | None] = []
    real = dispatcher._spin

    def counting(timeout):
        spins.append(timeout)
        return real(timeout)

    dispatcher._spin = counting  # type: ignore[method-assign]
    assert _get(proxy, "/version")[0] == 200
    assert _get(proxy, "/version")[0] == 200
    assert spins, "the dispatcher polls a moment before it sleeps"

    stream = socket.create_connection(proxy.address, TIMEOUT)  # relayed by a worker
    stream.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
    assert stream.recv(65536)
    spins.clear()
    for _ in range(3):
        assert _get(proxy, "/version")[0] == 200
    assert spins == [], "polled while a worker relayed a stream"
    stream.close()


@pytest.mark.skipif(not steps.DONTWAIT, reason="every send goes to a worker on this platform")
def test_a_small_chunked_answer_crosses_no_thread(proxy: ReverseProxy) -> None:
    """A chunked answer that is all here is relayed by the dispatcher, like a small one
    with a length: handing it to a worker costs two thread crossings."""
    dispatcher = proxy._dispatcher
    assert dispatcher is not None
    handed: list[object] = []
    real = dispatcher.workers.hand

    def counting(task):
        handed.append(task)
        real(task)

    dispatcher.workers.hand = counting  # type: ignore[method-assign]
    conn = _client(proxy)
    for _ in range(3):
        conn.request("GET", "/chunked?n=3&whole=1")
        assert conn.getresponse().read() == b"part0;part1;part2;"
    assert handed == []

    # More chunks than the dispatcher walks (each costs Python time): a worker's, in full.
    many = steps.DISPATCHER_CHUNKS + 1
    conn.request("GET", f"/chunked?n={many}&whole=1")
    assert conn.getresponse().read() == b"".join(f"part{i};".encode() for i in range(many))
    assert len(handed) == 1
    conn.close()


# -- idle ---------------------------------------------------------------------------------------


def test_the_dispatcher_sleeps_while_nothing_is_parked(proxy: ReverseProxy) -> None:
    """No connection to watch: no scan, no wake-up (idle CPU of the app)."""
    dispatcher = proxy._dispatcher
    assert dispatcher is not None
    real = dispatcher._poller.poll
    calls: list[float | None] = []

    def counting(timeout=None):
        calls.append(timeout)
        return real(timeout)

    dispatcher._poller.poll = counting  # type: ignore[method-assign]
    time.sleep(0.3)
    calls.clear()
    time.sleep(proxy._scan_every * 2.5)
    assert calls == [], "woke up with nothing parked"
    sock = socket.create_connection(proxy.address, TIMEOUT)  # parked: now it scans
    assert _get(proxy, "/version")[0] == 200
    time.sleep(proxy._scan_every * 1.5)
    assert calls and calls[-1] is not None
    sock.close()
