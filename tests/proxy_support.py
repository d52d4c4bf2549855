"""Real HTTP backends for the proxy tests: in this process, or as a child process to kill.

The backend is a small threaded ``http.server`` that can report its label, echo bodies and
headers, stream chunked responses, sleep, close early and switch protocols. Every answer
names its backend in ``X-Backend``. ``ChildBackend`` runs the same server in its own
process (``python proxy_support.py LABEL``), so a test can SIGKILL it as a child dies.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from trayupdater.proxy import Backend

TIMEOUT = 10.0  # generous: the suite must pass on a loaded 2-core machine


class HasAddress(Protocol):
    @property
    def address(self) -> tuple[str, int]: ...


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # As Go's net/http (the real children): else the body, written after the head, waits
    # for the proxy's delayed ACK on a reused connection and every answer takes 40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.requests_here = 0
        with self.server.lock:
            self.server.connections += 1
            self.server.open_connections += 1
            self.server.live.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.server.lock:
            self.server.open_connections -= 1
            self.server.live.discard(self.connection)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass  # trailers
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Backend", self.server.label)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        self.do_GET()

    def do_PUT(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.requests_here += 1
        with self.server.lock:
            self.server.requests += 1
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        route = url.path
        if route == "/version":
            self._send(200, self.server.label.encode())
        elif route == "/echo":
            body = self._body()
            self._send(200, body, {"X-Method": self.command})
        elif route == "/headers":
            self._body()
            fields = [[k, v] for k, v in self.headers.items()]
            self._send(200, json.dumps(fields).encode(), {"Content-Type": "application/json"})
        elif route == "/hop":
            self._send(
                200,
                b"ok",
                {
                    "Connection": "X-Private",
                    "X-Private": "secret",
                    "Keep-Alive": "timeout=5",
                    "Proxy-Thing": "1",
                    "X-Public": "yes",
                },
            )
        elif route == "/big":
            self._send(200, b"x" * int(query.get("n", 1 << 20)))
        elif route == "/chunked":
            # Piece by piece, or (?whole) head and body in one write, as Go's server sends
            # a small chunked answer.
            whole = "whole" in query
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
            out = [head]
            for i in range(int(query.get("n", 3))):
                part = f"part{i};".encode()
                out.append(b"%x\r\n%s\r\n" % (len(part), part))
            out.append(b"0\r\nX-Checksum: abc\r\n\r\n")
            for data in [b"".join(out)] if whole else out:
                self.wfile.write(data)
        elif route == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"no length, the close ends me")
            self.close_connection = True
        elif route == "/sleep":
            self._body()
            time.sleep(float(query.get("s", 1)))
            self._send(200, b"slept")
        elif route == "/close-early":
            self._body()
            self.close_connection = True  # no answer at all
        elif route == "/flaky":
            # Answers the first request on a connection, then drops the connection on the
            # next one without answering: a keep-alive race with an idle timeout.
            self._body()
            if self.requests_here > 1:
                self.close_connection = True
                return
            self._send(200, b"fresh")
        elif route == "/forever":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"4000\r\n" + b"y" * 0x4000 + b"\r\n")
                    self.wfile.flush()
            except OSError:
                self.server.write_failed.set()
                self.close_connection = True
        elif route == "/events":
            # An event stream: ``n`` events (default: until the client goes), one every
            # ``every`` seconds, chunked; ``hang``: then silence, the connection left open.
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            count, every = int(query.get("n", 1 << 30)), float(query.get("every", 0.05))
            try:
                for i in range(count):
                    event = f"data: {i}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                    time.sleep(every)
                if "hang" in query:
                    time.sleep(TIMEOUT)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
        elif route == "/status":
            self._send_status(int(query["code"]))
        elif route == "/ws":
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", self.headers.get("Upgrade", ""))
            self.end_headers()
            self.wfile.flush()
            while data := self.connection.recv(4096):
                self.connection.sendall(data.upper())
            self.close_connection = True
        else:
            self._send(404, b"no such route")

    def _send_status(self, code: int) -> None:
        self.send_response(code)
        if code == 304:
            self.send_header("Content-Length", "1234")  # describes the cached body
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    label: str
    lock: threading.Lock
    requests: int
    connections: int
    open_connections: int
    write_failed: threading.Event
    live: set[socket.socket]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # connections cut by the proxy or by close() are expected here


class RealBackend:
    """A real HTTP/1.1 server on a free loopback port."""

    def __init__(self, label: str) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.label = label
        self.server.lock = threading.Lock()
        self.server.requests = 0
        self.server.connections = 0
        self.server.open_connections = 0
        self.server.write_failed = threading.Event()
        self.server.live = set()
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.backend = Backend("127.0.0.1", self.server.server_address[1], label)

    @property
    def requests(self) -> int:
        return self.server.requests

    def close(self) -> None:
        """Stop like a killed child: no listener, and every open connection cut."""
        self.server.shutdown()
        self.server.server_close()
        with self.server.lock:
            live = list(self.server.live)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class ChildBackend:
    """The same server in a child process: ``kill()`` is a real SIGKILL.

    ``on_exit`` runs in a watcher thread the moment the process has exited, as a supervisor
    notices a child's exit; ``exited_at`` is when (monotonic).
    """

    def __init__(self, label: str, on_exit: Callable[[Backend], None] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), label],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "LISTENING":
            self.proc.kill()
            raise RuntimeError(f"backend {label} did not start: {line}")
        self.backend = Backend("127.0.0.1", int(line[1]), label)
        self.exited_at = 0.0
        self._on_exit = on_exit
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        self.proc.wait()
        self.exited_at = time.monotonic()
        if self._on_exit is not None:
            self._on_exit(self.backend)

    def kill(self) -> float:
        """SIGKILL; returns when it was sent (monotonic)."""
        sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        return sent

    def close(self) -> None:
        # Killed by the test's cleanup, not "dying": nobody is told (the proxy it would tell
        # may be closed, and its log lines would land after the test's log capture ended).
        self._on_exit = None
        if self.proc.poll() is None:
            self.kill()
        self.proc.wait(TIMEOUT)
        self._watcher.join(TIMEOUT)


class _RawBackend:
    """A loopback listener whose every connection ``_serve`` handles on a thread of its own:
    the base of the backends that write raw bytes. Subclasses set their fields first."""

    def __init__(self, label: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.backend = Backend("127.0.0.1", self.listener.getsockname()[1], label)
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.connections += 1
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.listener.close()


class PausingBackend(_RawBackend):
    """Answers every request with a head promising ``length`` bytes and ``first`` of them,
    then sends the rest once ``resume`` is set (never, if it is not): a backend sending a
    large body slowly. The proxy may have given up on a connection by then."""

    def __init__(self, length: int, first: int) -> None:
        self.body = os.urandom(length)
        self.first = first
        self.resume = threading.Event()
        self.answering = 0
        super().__init__("pausing")

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.body)
            conn.sendall(head + self.body[: self.first])
            self.answering += 1
            if self.resume.wait(TIMEOUT):
                conn.sendall(self.body[self.first :])
                conn.recv(1)  # until the proxy closes or reuses it


class ScriptedBackend(_RawBackend):
    """A raw backend: every connection it accepts is served by ``script(conn, requests)``,
    where ``requests()`` returns the next request head it received (None at EOF). For
    answers no HTTP library would write: bytes after a response, odd status lines."""

    def __init__(self, script: Callable[[socket.socket, Callable[[], bytes | None]], None]):
        self.script = script
        super().__init__("scripted")

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()

        def next_request() -> bytes | None:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return None
                buf.extend(data)
            end = buf.index(b"\r\n\r\n") + 4
            head = bytes(buf[:end])
            del buf[:end]
            return head

        with conn, contextlib.suppress(OSError):
            conn.settimeout(TIMEOUT)
            self.script(conn, next_request)


def open_client(proxy: HasAddress) -> http.client.HTTPConnection:
    host, port = proxy.address
    return http.client.HTTPConnection(host, port, timeout=TIMEOUT)


def get(proxy: HasAddress, path: str) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = open_client(proxy)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), response
    finally:
        conn.close()


def raw(proxy: HasAddress) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=TIMEOUT)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the proxy closes; a reset (instead of a clean close) fails the test."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def wait_readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def wait_until(condition, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def serve_in_this_process(label: str) -> None:
    backend = RealBackend(label)
    print(f"LISTENING {backend.backend.port}", flush=True)
    backend.thread.join()


if __name__ == "__main__":
    serve_in_this_process(sys.argv[1])
