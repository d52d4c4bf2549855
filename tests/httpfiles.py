"""A real threaded HTTP file server for tests, with switches that make it misbehave.

Serves in-memory files on a loopback address and port 0. Every request is logged (path,
headers, status, body bytes sent) so tests can check what actually went over the wire,
e.g. that a resume sent ``Range`` and received fewer bytes.

Fault switches (plain attributes; set them between requests):
- ``ignore_range``: answer 200 with the whole file even when ``Range`` is asked.
- ``range_start``: answer a Range request from this offset instead (a wrong ``Content-Range``).
- ``cut_after``: close the socket after this many body bytes (Content-Length promised more).
- ``hang_after``: stop sending after this many body bytes until the server is closed.
- ``status``: answer every request with this status and a short body.
- ``chunked``: no Content-Length; chunked transfer encoding.
- ``no_length``: no Content-Length; the body ends when the connection closes.
- ``redirects``: path -> absolute URL answered with 302.
- ``drip``: (bytes, seconds): send the body that many bytes at a time with a pause between.
- ``content_type``: the Content-Type of every answer (``application/octet-stream``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    status: int = 0
    body_sent: int = 0


@dataclass
class Faults:
    ignore_range: bool = False
    range_start: int | None = None
    cut_after: int | None = None
    hang_after: int | None = None
    status: int | None = None
    chunked: bool = False
    no_length: bool = False
    redirects: dict[str, str] = field(default_factory=dict)
    drip: tuple[int, float] | None = None
    content_type: str = "application/octet-stream"


class FileServer:
    def __init__(self, files: dict[str, bytes] | None = None, host: str = "127.0.0.1") -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.faults = Faults()
        self.hits: list[Hit] = []
        self.released = threading.Event()  # set on close: frees handlers stuck in a hang
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer((host, 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        # A short poll interval: shutdown() waits for it, once per test.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self._httpd.server_address[0]}:{self.port}{path}"

    def log(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def hits_for(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def close(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FileServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    owner: FileServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections must not outlive a test run for long

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        owner, faults = self.owner, self.owner.faults
        path = self.path.split("?", 1)[0]
        hit = Hit(path=path, headers={k.lower(): v for k, v in self.headers.items()})
        owner.log(hit)
        if path in faults.redirects:
            self._reply(hit, 302, b"", {"Location": faults.redirects[path]})
            return
        if faults.status is not None:
            self._reply(hit, faults.status, b"fault\n", {})
            return
        data = owner.files.get(path)
        if data is None:
            self._reply(hit, 404, b"not found\n", {})
            return
        asked = hit.headers.get("range", "")
        if not asked or faults.ignore_range:
            self._reply(hit, 200, data, {})
            return
        start = int(asked.removeprefix("bytes=").split("-", 1)[0])
        if start >= len(data):
            self._reply(hit, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        if faults.range_start is not None:
            start = faults.range_start
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        self._reply(hit, 206, data[start:], headers)

    def _reply(self, hit: Hit, status: int, body: bytes, headers: dict[str, str]) -> None:
        faults = self.owner.faults
        hit.status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", faults.content_type)
        if faults.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif faults.no_length:
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        stop = len(body)
        for limit in (faults.cut_after, faults.hang_after):
            if limit is not None:
                stop = min(stop, limit)
        try:
            self._write_body(hit, body[:stop], faults.chunked)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. refused an oversize body)
            return
        if stop < len(body) and faults.hang_after is not None:
            self.owner.released.wait(60)
        if stop < len(body) or faults.no_length:
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client may have given up already
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if faults.chunked:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

    def _write_body(self, hit: Hit, body: bytes, chunked: bool) -> None:
        step, pause = self.owner.faults.drip or (16 * 1024, 0.0)
        for pos in range(0, len(body), step):
            if pause and pos and self.owner.released.wait(pause):
                return  # the server is closing: stop dripping
            piece = body[pos : pos + step]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            hit.body_sent += len(piece)
        self.wfile.flush()
