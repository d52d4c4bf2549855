"""A real forward proxy on loopback, as a company network puts in front of a fleet.

``ForwardProxy`` speaks HTTP/1.1 proxying on 127.0.0.1: ``CONNECT host:port`` opens a
tunnel (what every HTTPS request through a proxy is), a request in absolute form
(``GET http://…``) is refused with 502, since trayupdater must never send one. Each request
head is recorded verbatim in :attr:`ForwardProxy.seen` (what a proxy's log could hold),
with the first byte the client sent into the tunnel (0x16: a TLS handshake, so nothing
after it is readable to the proxy).

Names are resolved by the proxy, not the client, as on a network where only the proxy can
reach the outside: ``hosts={"updates.example.test": 8443}`` sends that name to
127.0.0.1:8443. The proxy connects only to loopback: a test can never reach out through it.
``password`` makes it demand ``Proxy-Authorization`` (407 without it).
"""

from __future__ import annotations

import base64
import contextlib
import selectors
import socket
import socketserver
import threading
from dataclasses import dataclass
from types import TracebackType

from trayupdater.urls import is_loopback_host

HEAD_LIMIT = 64 * 1024
IDLE_TIMEOUT = 30.0


@dataclass
class Seen:
    method: str
    target: str  # "host:port" for CONNECT, the URL otherwise
    head: bytes  # the request line and headers exactly as received
    status: int = 0  # what the proxy answered
    first_tunnel_byte: int | None = None

    def header(self, name: str) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


class ForwardProxy:
    def __init__(
        self, *, hosts: dict[str, int] | None = None, user: str = "", password: str = ""
    ) -> None:
        self.hosts = dict(hosts or {})
        self.credentials = (
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if password
            else None
        )
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="forward-proxy", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connects(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == "CONNECT"]

    def everything_seen(self) -> bytes:
        with self._lock:
            return b"\n".join(s.head for s in self.seen)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- one client connection ---

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(IDLE_TIMEOUT)
        head = _read_head(client)
        if head is None:
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = line.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        seen = Seen(method, target, head)
        with self._lock:
            self.seen.append(seen)
        if self.credentials and seen.header("Proxy-Authorization") != self.credentials:
            seen.status = 407
            client.sendall(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
            )
            return
        if method != "CONNECT":
            seen.status = 502
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port_text = target.rpartition(":")
        host = host.strip("[]")
        address = ("127.0.0.1", self.hosts[host]) if host in self.hosts else (host, port_text)
        if not is_loopback_host(address[0]) or not str(address[1]).isdigit():
            seen.status = 502  # never out of the machine
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            upstream = socket.create_connection((address[0], int(address[1])), timeout=10)
        except OSError:
            seen.status = 502
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        seen.status = 200
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        with upstream:
            self._pump(client, upstream, seen)

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket, seen: Seen) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                ready = selector.select(IDLE_TIMEOUT)
                if not ready:
                    return
                for key, _ in ready:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if source is client and seen.first_tunnel_byte is None:
                        seen.first_tunnel_byte = data[0]
                    with contextlib.suppress(OSError):
                        key.data.sendall(data)
        finally:
            selector.close()


def _read_head(sock: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(4096)
        except OSError:
            return None
        if not chunk or len(data) > HEAD_LIMIT:
            return None
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]
