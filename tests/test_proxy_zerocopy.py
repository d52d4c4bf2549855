"""Large response bodies spliced socket -> pipe -> socket (Linux), or copied elsewhere:
byte-exact either way, a client or backend failing mid-body never leaks bytes into the next
response, and a client that stops reading or a backend that pauses never stalls the others."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from proxy_support import TIMEOUT, PausingBackend, RealBackend
from proxy_support import get as _get
from proxy_support import open_client as _client
from proxy_support import raw as _raw
from proxy_support import wait_until as _wait_until

from trayupdater.proxy import Backend, ReverseProxy, zerocopy

linux_only = pytest.mark.skipif(not zerocopy.AVAILABLE, reason="os.splice is Linux-only")


@pytest.fixture
def proxy(backend: RealBackend) -> Iterator[ReverseProxy]:
    # One worker: what a slow client hands over is finished by the same thread.
    with ReverseProxy("127.0.0.1", 0, workers=1) as proxy:
        proxy.switch(backend.backend)
        yield proxy


@pytest.fixture
def spliced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes moved by each splice_length call."""
    calls: list[int] = []
    real = zerocopy.splice_length

    def spy(src, dst, remaining, pipes):  # type: ignore[no-untyped-def]
        calls.append(remaining)
        return real(src, dst, remaining, pipes)

    monkeypatch.setattr(zerocopy, "splice_length", spy)
    return calls


def _echo(proxy: ReverseProxy, body: bytes) -> bytes:
    conn = _client(proxy)
    try:
        conn.request("PUT", "/echo", body=body)
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


SIZES = (65_535, 65_537, zerocopy.SPLICE_MIN + 70_000, 3 * 1024 * 1024 + 7)


@linux_only
def test_large_bodies_are_spliced_and_byte_exact(proxy: ReverseProxy, spliced: list[int]):
    for size in SIZES:
        body = os.urandom(size)
        assert _echo(proxy, body) == body
    # The two large ones were spliced, minus what arrived with the head; small ones copied.
    assert len(spliced) == 2
    assert all(0 < n <= size for n, size in zip(spliced, SIZES[2:], strict=True))


def test_without_splice_bodies_are_copied_byte_exact(
    proxy: ReverseProxy, spliced: list[int], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(zerocopy, "AVAILABLE", False)  # as on macOS and Windows
    for size in SIZES:
        body = os.urandom(size)
        assert _echo(proxy, body) == body
    assert spliced == []


@linux_only
def test_a_client_vanishing_mid_body_leaves_nothing_for_the_next_response(
    proxy: ReverseProxy, backend: RealBackend, spliced: list[int], monkeypatch: pytest.MonkeyPatch
):
    dropped = threading.Event()
    real_drop = zerocopy.Pipes.drop

    def drop(self: zerocopy.Pipes, pipe: zerocopy.Pipe) -> None:
        dropped.set()
        real_drop(self, pipe)

    monkeypatch.setattr(zerocopy.Pipes, "drop", drop)
    sock = _raw(proxy)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(b"GET /big?n=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    received = 0
    while received < 300_000:
        received += len(sock.recv(65536))
    # Gone with unread data: an RST, so the proxy's next splice to it fails.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert dropped.wait(10), "the pipe that may hold bytes of that body was not dropped"
    assert _wait_until(lambda: backend.server.open_connections == 0)  # upstream closed too
    for size in (3 * 1024 * 1024, 200_000):
        body = os.urandom(size)
        assert _echo(proxy, body) == body  # a fresh pipe
    assert len(spliced) == 3


class _ShortBackend:
    """Promises a body of ``length`` bytes, sends ``sent`` of them, then closes."""

    def __init__(self, length: int, sent: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.backend = Backend("127.0.0.1", self.listener.getsockname()[1], "short")
        self._head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length
        self._sent = sent
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(self._head + b"y" * self._sent)


@linux_only
def test_a_backend_cutting_a_spliced_body_short_closes_the_client(spliced: list[int]):
    short = _ShortBackend(length=4_000_000, sent=1_000_000)
    with ReverseProxy("127.0.0.1", 0, workers=1) as proxy:
        proxy.switch(short.backend)
        sock = _raw(proxy)
        sock.settimeout(10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"Content-Length: 4000000" in head
        assert body == b"y" * 1_000_000  # truncated, never padded or mixed with anything
        assert len(spliced) == 1
    short.listener.close()


def _pipes() -> int:
    """Pipe descriptors open in this process."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        # Closed meanwhile (listdir's own descriptor, for one): not counted.
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    return count


@linux_only
def test_closing_the_proxy_closes_its_pipes(backend: RealBackend) -> None:
    before = _pipes()
    with ReverseProxy("127.0.0.1", 0, workers=4) as proxy:
        proxy.switch(backend.backend)
        threads = [
            threading.Thread(target=lambda: _echo(proxy, b"z" * 3_000_000)) for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert _pipes() > before  # bodies were spliced; their pipes are kept for reuse
    assert _wait_until(lambda: _pipes() == before), f"{_pipes() - before} pipe fds left open"


@linux_only
def test_a_client_that_stops_reading_a_large_body_stalls_no_one(
    backend: RealBackend, spliced: list[int]
) -> None:
    """A large body is relayed by a worker: one client that stops reading holds that
    worker, and the dispatcher keeps serving everyone else."""
    with ReverseProxy("127.0.0.1", 0, workers=2) as proxy:
        proxy.switch(backend.backend)
        stuck = _raw(proxy)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        stuck.sendall(b"GET /big?n=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")  # never read
        assert _wait_until(lambda: len(spliced) == 1)
        for _ in range(5):
            started = time.monotonic()
            assert _get(proxy, "/version")[0] == 200
            assert time.monotonic() - started < 1.0
        stuck.close()


@linux_only
def test_a_backend_pausing_mid_body_stalls_no_one(spliced: list[int]) -> None:
    pausing = PausingBackend(length=3_000_000, first=400_000)
    other = RealBackend("other")
    with ReverseProxy("127.0.0.1", 0, workers=2) as proxy:
        proxy.switch(pausing.backend)
        sock = _raw(proxy)
        sock.settimeout(TIMEOUT)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while len(data) < 300_000:
            data += sock.recv(1 << 20)
        # Mid-body, the transfer waits in a worker for the backend's next bytes; new
        # requests (to another backend) are served meanwhile.
        proxy.switch(other.backend)
        for _ in range(3):
            started = time.monotonic()
            assert _get(proxy, "/version")[:2] == (200, b"other")
            assert time.monotonic() - started < 1.0
        pausing.resume.set()
        _, _, body = data.partition(b"\r\n\r\n")
        while len(body) < len(pausing.body):
            body += sock.recv(1 << 20)
        assert body == pausing.body
        assert len(spliced) == 1
        sock.close()
    other.close()
    pausing.listener.close()


@linux_only
def test_a_backend_stalling_mid_body_is_cut_off_after_the_backend_timeout() -> None:
    stalling = PausingBackend(length=3_000_000, first=400_000)  # never resumes
    with ReverseProxy("127.0.0.1", 0, workers=1, backend_timeout=1.0) as proxy:
        proxy.switch(stalling.backend)
        sock = _raw(proxy)
        sock.settimeout(TIMEOUT)
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
        took = time.monotonic() - started
        _, _, body = data.partition(b"\r\n\r\n")
        assert body == stalling.body[:400_000]  # truncated, then closed
        assert 0.9 < took < 5.0
        sock.close()
    stalling.resume.set()
    stalling.listener.close()
