"""Edges of the proxy found by attacking it with real sockets: half-closes, early answers.

Real parts: a real ReverseProxy, and a raw scripted backend on loopback
(``proxy_support.ScriptedBackend``) or the real ``http.server`` backend.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from proxy_support import TIMEOUT, RealBackend, ScriptedBackend, read_all, wait_until

from trayupdater.proxy import ReverseProxy

Requests = Callable[[], bytes | None]
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"


@pytest.fixture
def proxy() -> Iterator[ReverseProxy]:
    with ReverseProxy("127.0.0.1", 0) as made:
        yield made


def _upgrade(sock: socket.socket) -> bytes:
    """Ask for a tunnel; the 101 head the proxy answered with."""
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)
        assert data, head
        head += data
    return head


def test_a_client_half_closing_a_tunnel_still_gets_the_backends_answer(proxy) -> None:
    """A client that sends its last bytes through an upgraded connection and shuts its write
    side (``docker attach`` does so at the end of stdin) reads the backend's answer until
    the backend closes. The tunnel ended at the client's EOF and closed both sockets: the
    answer the backend sent after it was lost."""
    received: list[bytes] = []

    def script(conn: socket.socket, requests: Requests) -> None:
        if requests() is None:
            return
        conn.sendall(SWITCHED)
        data = b""
        while chunk := conn.recv(65536):  # until the client's EOF, passed on
            data += chunk
        received.append(data)
        conn.sendall(b"got " + data)  # the answer comes after the EOF

    backend = ScriptedBackend(script)
    try:
        proxy.switch(backend.backend)
        with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
            assert _upgrade(sock).startswith(b"HTTP/1.1 101 ")
            sock.sendall(b"stdin")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b"got stdin"
        assert received == [b"stdin"]
    finally:
        backend.close()


def test_a_tunnel_half_closed_by_the_backend_still_carries_the_clients_bytes(proxy) -> None:
    """The other direction: the backend is done sending (EOF) but still reads; the client's
    bytes after that reach it, and the client sees the EOF."""
    received: list[bytes] = []

    def script(conn: socket.socket, requests: Requests) -> None:
        if requests() is None:
            return
        conn.sendall(SWITCHED)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        received.append(data)

    backend = ScriptedBackend(script)
    try:
        proxy.switch(backend.backend)
        with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
            assert _upgrade(sock).startswith(b"HTTP/1.1 101 ")
            assert read_all(sock) == b""  # the backend's EOF, passed on
            sock.sendall(b"late words")
            sock.shutdown(socket.SHUT_WR)
            assert wait_until(lambda: received == [b"late words"])
    finally:
        backend.close()


def test_a_half_open_tunnel_ends_at_its_peer_timeout() -> None:
    """A client that half-closed a tunnel whose backend then says nothing more does not keep
    it open for ever: the backend gets its timeout, then both sockets close."""

    def script(conn: socket.socket, requests: Requests) -> None:
        if requests() is None:
            return
        conn.sendall(SWITCHED)
        with contextlib.suppress(OSError):
            conn.recv(1)  # the EOF
            conn.recv(1)  # and silence until the proxy closes

    backend = ScriptedBackend(script)
    try:
        with ReverseProxy("127.0.0.1", 0, backend_timeout=0.5) as proxy:
            proxy.switch(backend.backend)
            with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
                assert _upgrade(sock).startswith(b"HTTP/1.1 101 ")
                sock.shutdown(socket.SHUT_WR)
                started = time.monotonic()
                assert read_all(sock) == b""
                assert time.monotonic() - started < TIMEOUT / 2
    finally:
        backend.close()


def test_a_half_closed_client_held_during_a_restart_still_gets_its_answer(proxy) -> None:
    """A client that sends its request and shuts its write side (``printf ... | nc -N``, many
    HTTP/1.0 scripts) is answered normally. The same request held while the child restarts
    was dropped at the client's EOF, taken for a client gone: closed without a word."""
    backend = RealBackend("a")
    try:
        proxy.hold()  # the child is restarting
        with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /version HTTP/1.0\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            time.sleep(0.3)  # held, and the EOF reaches the proxy meanwhile
            proxy.switch(backend.backend)
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.endswith(b"\r\n\r\na")
    finally:
        backend.server.shutdown()
        backend.server.server_close()


def test_an_early_answer_to_a_buffered_upload_reaches_the_client() -> None:
    """A body the proxy buffers (up to ``max_buffered_body``) goes upstream with its head in
    one send. A backend refusing it with 413 before reading it, then closing (Go's
    MaxBytesReader), made that send fail once the body outgrew the socket buffers (a few
    MiB on Linux loopback, less elsewhere): the client got 502, not the 413 the streamed
    path passes on."""

    def script(conn: socket.socket, requests: Requests) -> None:
        if requests() is not None:
            conn.sendall(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n"
                b"Connection: close\r\n\r\ntoo large"
            )
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.3)  # then close with the body unread (the kernel sends RST)

    backend = ScriptedBackend(script)
    size = 12 * 1024 * 1024
    try:
        with ReverseProxy("127.0.0.1", 0, max_buffered_body=16 * 1024 * 1024) as proxy:
            proxy.switch(backend.backend)
            with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
                head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
                sock.sendall(head + b"x" * size)  # all of it: the proxy buffers it
                answer = b""
                while b"too large" not in answer and (data := sock.recv(65536)):
                    answer += data
        assert answer.startswith(b"HTTP/1.1 413 "), answer
    finally:
        backend.close()
