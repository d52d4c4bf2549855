"""Waiting is not work: a client that reads slowly or not at all, and an event stream between
events, hold no worker thread and no in-flight slot, so a handful of them cannot lock every
other client out. Each wait is still bounded by its timeout, and every byte still arrives."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest
from proxy_support import TIMEOUT, PausingBackend, RealBackend, wait_until
from proxy_support import get as _get

from trayupdater.proxy import ReverseProxy, steps, workers

WORKERS = 2  # also the requests in flight: four slow peers are twice what it allows
SLOW = 4


def _request(
    proxy: ReverseProxy, path: str, rcvbuf: int | None = None, count: int = 1
) -> socket.socket:
    """``count`` requests for ``path``, pipelined (their answers fill any buffer)."""
    sock = socket.socket()
    if rcvbuf:  # before connecting: the window it advertises is what the proxy can send
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect(proxy.address)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * count)
    return sock


def _read_until(sock: socket.socket, data: bytearray, marker: bytes) -> None:
    while marker not in data:
        more = sock.recv(65536)
        assert more, f"closed before {marker!r}"
        data += more


def _bodies(sock: socket.socket, length: int, count: int = 1) -> list[int]:
    """Read ``count`` responses of ``length`` body bytes: how many body bytes each brought."""
    data, got = bytearray(), []
    for _ in range(count):
        _read_until(sock, data, b"\r\n\r\n")
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d" % length in head
        data = bytearray(rest)
        while len(data) < length:
            more = sock.recv(1 << 20)
            if not more:
                return [*got, len(data)]
            data += more
        got.append(length)
        del data[:length]
    return got


def _others_are_served(proxy: ReverseProxy) -> None:
    for _ in range(3):
        assert _get(proxy, "/version")[:2] == (200, b"v1")


# 20 MB: far more than every buffer between backend and client (spliced on Linux); 150 kB:
# the rest after the first read is copied; 60 kB: read whole, sent by the dispatcher. The
# smaller ones are pipelined by the hundred, so that the client's socket fills.
@pytest.mark.parametrize(("size", "count"), [(20_000_000, 1), (150_000, 100), (60_000, 100)])
def test_clients_that_stop_reading_lock_no_one_out(
    backend: RealBackend, size: int, count: int
) -> None:
    with ReverseProxy("127.0.0.1", 0, workers=WORKERS) as proxy:
        proxy.switch(backend.backend)
        stuck = [_request(proxy, f"/big?n={size}", 4096, count) for _ in range(SLOW)]
        assert wait_until(lambda: backend.server.requests >= SLOW)
        _others_are_served(proxy)
        # And nothing was lost: each of them, reading now, gets every body whole.
        for sock in stuck:
            assert _bodies(sock, size, count) == [size] * count
            sock.close()


def test_a_client_that_takes_nothing_for_its_idle_timeout_is_let_go(
    backend: RealBackend,
) -> None:
    """Waiting for a client is bounded as a blocking send was: by client_idle_timeout. Its
    connection is closed, the backend's too (mid-message), and the pipe is not kept."""
    size = 20_000_000
    with ReverseProxy("127.0.0.1", 0, workers=WORKERS, client_idle_timeout=1.0) as proxy:
        proxy.switch(backend.backend)
        stuck = _request(proxy, f"/big?n={size}", rcvbuf=4096)
        assert wait_until(lambda: backend.server.requests >= 1)
        assert wait_until(lambda: backend.server.open_connections == 0), "backend not let go"
        assert _bodies(stuck, size) < [size]  # cut short, not stalled for ever
        stuck.close()
        _others_are_served(proxy)


def _events(sock: socket.socket, data: bytearray, upto: int) -> None:
    _read_until(sock, data, f"data: {upto}\n\n".encode())


def test_open_event_streams_lock_no_one_out(backend: RealBackend) -> None:
    with ReverseProxy("127.0.0.1", 0, workers=WORKERS) as proxy:
        proxy.switch(backend.backend)
        streams = [_request(proxy, "/events?every=0.05") for _ in range(SLOW * 2)]
        received = [bytearray() for _ in streams]
        for sock, data in zip(streams, received, strict=True):
            _events(sock, data, 0)  # every stream is served, not only the first WORKERS
            assert data.startswith(b"HTTP/1.1 200 ")
        _others_are_served(proxy)
        for sock, data in zip(streams, received, strict=True):
            _events(sock, data, 3)  # and they keep flowing
            sock.close()


def test_a_stream_silent_past_the_backend_timeout_is_cut_short(backend: RealBackend) -> None:
    with ReverseProxy("127.0.0.1", 0, workers=WORKERS, backend_timeout=0.5) as proxy:
        proxy.switch(backend.backend)
        sock = _request(proxy, "/events?n=1&hang=1")
        data = bytearray()
        _events(sock, data, 0)
        while more := sock.recv(65536):
            data += more
        assert b"0\r\n\r\n" not in data  # truncated, never passed off as complete
        sock.close()


def test_a_101_to_a_request_that_asked_for_no_upgrade_gets_502(backend: RealBackend) -> None:
    with ReverseProxy("127.0.0.1", 0, workers=WORKERS) as proxy:
        proxy.switch(backend.backend)
        sock = _request(proxy, "/ws")  # /ws answers 101 whatever was asked
        data = bytearray()
        with contextlib.suppress(OSError):
            while more := sock.recv(65536):
                data += more
        assert data.startswith(b"HTTP/1.1 502 ")
        sock.close()


def test_a_client_trickling_its_reads_costs_no_worker_time_between_them(
    backend: RealBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker waits a moment for a full client before giving the task back (a fast client
    drains in microseconds). A client that needed the dispatcher once is not waited for
    again: else each of its wake-ups would cost a worker that moment."""
    waits: list[tuple[float, bool]] = []
    real = workers.wait_ready

    def recorded(sock: socket.socket, timeout: float, *, write: bool = False) -> bool:
        ready = real(sock, timeout, write=write)
        waits.append((timeout, ready))
        return ready

    monkeypatch.setattr(workers, "wait_ready", recorded)
    size = 20_000_000
    with ReverseProxy("127.0.0.1", 0, workers=WORKERS) as proxy:
        proxy.switch(backend.backend)
        sock = _request(proxy, f"/big?n={size}")
        data = bytearray()
        _read_until(sock, data, b"\r\n\r\n")
        got = len(data) - data.index(b"\r\n\r\n") - 4
        while got < size:
            time.sleep(0.005)  # about 50 MB/s: slower than the proxy, fast enough for a test
            got += len(sock.recv(262144))
        sock.close()
    stalled = [ready for timeout, ready in waits if timeout == steps.STALL_SECONDS and not ready]
    assert len(stalled) == 1, f"a worker waited out its moment {len(stalled)} times"
    assert len(waits) > 3  # it did trickle: woken many times


@pytest.mark.parametrize("chunked", [False, True])
def test_clients_uploading_large_bodies_slowly_lock_no_one_out(
    backend: RealBackend, chunked: bool
) -> None:
    """A body past max_buffered_body is streamed upstream as it arrives; a client sending it
    at a crawl (within the rate rule) is waited for without a thread."""
    body = os.urandom(3 * 1024 * 1024)
    # Past max_buffered_body (1 MiB) in hand: a chunked body is streamed from then on too.
    first, rest = body[:1_200_000], body[1_200_000:]
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)

    def framed(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data

    with ReverseProxy("127.0.0.1", 0, workers=WORKERS) as proxy:
        proxy.switch(backend.backend)
        slow = []
        for _ in range(SLOW):
            sock = socket.create_connection(proxy.address, timeout=TIMEOUT)
            head = b"PUT /echo HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % framing
            sock.sendall(head + framed(first))
            slow.append(sock)
        assert wait_until(lambda: backend.server.requests >= SLOW)
        _others_are_served(proxy)
        for sock in slow:  # they go on, and every byte arrives
            sock.sendall(framed(rest) + (b"0\r\n\r\n" if chunked else b""))
        for sock in slow:
            assert _bodies(sock, len(body)) == [len(body)]
            sock.close()


def test_a_streamed_upload_gone_silent_gets_408_when_its_pause_runs_out(
    backend: RealBackend,
) -> None:
    """The dispatcher's wait for a streamed body's next bytes is bounded by the rate rule
    (no pause past body_timeout), as the worker's blocking wait was."""
    options = {"max_buffered_body": 1024, "body_timeout": 0.5, "workers": WORKERS}
    with ReverseProxy("127.0.0.1", 0, **options) as proxy:  # type: ignore[arg-type]
        proxy.switch(backend.backend)
        sock = socket.create_connection(proxy.address, timeout=TIMEOUT)
        sock.sendall(
            b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 5000
        )
        answer = bytearray()
        with contextlib.suppress(OSError):  # then silence
            while more := sock.recv(65536):
                answer += more
        assert answer.startswith(b"HTTP/1.1 408 ")
        sock.close()
        _others_are_served(proxy)


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def _tunnel(proxy: ReverseProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=TIMEOUT)
    sock.sendall(UPGRADE)
    data = bytearray()
    _read_until(sock, data, b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 101 ")
    return sock


def _echo(sock: socket.socket, message: bytes) -> None:
    sock.sendall(message)
    data = bytearray()
    _read_until(sock, data, message.upper())


def test_open_websockets_lock_no_one_out(backend: RealBackend) -> None:
    with ReverseProxy("127.0.0.1", 0, workers=WORKERS) as proxy:
        proxy.switch(backend.backend)
        tunnels = [_tunnel(proxy) for _ in range(SLOW * 2)]  # each answered: none waits
        _others_are_served(proxy)
        for i, sock in enumerate(tunnels):  # and every one of them still carries bytes
            _echo(sock, b"hello %d" % i)
        for sock in tunnels:
            sock.close()


def test_a_flood_through_a_websocket_stalls_no_one(backend: RealBackend) -> None:
    """Each wake-up moves at most one read per side, so a tunnel that always has bytes to
    move cannot keep the dispatcher from the others; every byte arrives in order."""
    message = os.urandom(8 * 1024 * 1024).hex().encode()[: 8 * 1024 * 1024]
    with ReverseProxy("127.0.0.1", 0, workers=WORKERS) as proxy:
        proxy.switch(backend.backend)
        sock = _tunnel(proxy)
        sender = threading.Thread(target=sock.sendall, args=(message,), daemon=True)
        sender.start()
        received = bytearray()
        _read_until(sock, received, message[:65536].upper())  # the flood is under way
        _others_are_served(proxy)
        while len(received) < len(message):
            more = sock.recv(1 << 20)
            assert more
            received += more
        assert received == message.upper()
        sender.join(TIMEOUT)
        sock.close()


def test_closing_the_proxy_ends_its_websockets(backend: RealBackend) -> None:
    proxy = ReverseProxy("127.0.0.1", 0, workers=WORKERS)
    proxy.start()
    proxy.switch(backend.backend)
    sock = _tunnel(proxy)
    _echo(sock, b"before")
    proxy.close()
    assert sock.recv(65536) == b""  # closed by the proxy, not left hanging
    sock.close()


# 3 MB: spliced (Linux); 150 kB: the rest after the first read is copied.
@pytest.mark.parametrize(("length", "first"), [(3_000_000, 400_000), (150_000, 70_000)])
def test_backends_sending_large_bodies_slowly_lock_no_one_out(
    backend: RealBackend, length: int, first: int
) -> None:
    """The backend side of a large body is waited for without a thread too: with it, slow
    downloads through the proxy cannot take every worker."""
    pausing = PausingBackend(length, first)
    with ReverseProxy("127.0.0.1", 0, workers=WORKERS) as proxy:
        proxy.switch(pausing.backend)
        slow = [_request(proxy, "/") for _ in range(SLOW)]
        assert wait_until(lambda: pausing.answering == SLOW)
        proxy.switch(backend.backend)  # new requests go elsewhere; the slow ones go on
        _others_are_served(proxy)
        pausing.resume.set()
        for sock in slow:
            data = bytearray()
            _read_until(sock, data, b"\r\n\r\n")
            body = data[data.index(b"\r\n\r\n") + 4 :]
            while len(body) < len(pausing.body):
                more = sock.recv(1 << 20)
                assert more
                body += more
            assert body == pausing.body
            sock.close()
    pausing.close()
