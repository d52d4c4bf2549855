"""Traffic for which "zero failed requests" broke (found by a helper; each test fails on the
old code).

A request whose body is too large to buffer (or a chunked one of many chunks) is streamed to
the backend. When it arrived while a crashed child was being restarted, the proxy answered
503 at once instead of holding it like any other request: yet nothing of its body had been
read, so it could wait in the client's socket until the child was back.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import publish_script, wait_for
from test_runtime import make_config, running

from trayupdater.app import App
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

# A child that answers POST and PUT with its version and the length of the body it read.
_POST_SERVER = """\
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "1.0.0"

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(VERSION.encode())

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))
        data = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\\r\\n", b""):
                    pass
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    def do_POST(self):
        self._send(f"{VERSION} {len(self._body())}".encode())

    do_PUT = do_POST

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
server.serve_forever(poll_interval=0.05)
"""

BIG = 2 * 1024 * 1024  # past max_buffered_body (1 MiB): streamed
CHUNKS = 400  # past the chunks the dispatcher walks (256): streamed


class RawRequest:
    """One request sent on a thread (``sendall`` blocks while the proxy does not read the
    body): what came back until the proxy closed, or the error."""

    def __init__(self, address: tuple[str, int], data: bytes) -> None:
        self.answer = b""
        self.error: BaseException | None = None
        self._sock = socket.create_connection(address, timeout=20)
        self._data = data
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._sock.sendall(self._data)
            while chunk := self._sock.recv(65536):
                self.answer += chunk
        except OSError as exc:
            self.error = exc
        finally:
            self._sock.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@pytest.fixture
def post_app(feed: ReleaseFeed, tmp_path: Path) -> Iterator[App]:
    publish_script(feed, "1.0.0", _POST_SERVER)
    app = App(make_config(feed, tmp_path / "data"))
    app.start()
    try:
        wait_for(running(app, "1.0.0"), what="1.0.0 serving")
        time.sleep(1.2)  # past its 1 s probation: a crash now is restarted, requests held
        yield app
    finally:
        app.stop()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % BIG
        + b"x" * BIG,
        b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n" % BIG + b"x" * BIG,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + b"1\r\nx\r\n" * CHUNKS + b"0\r\n\r\n",
    ],
    ids=["large-post", "large-put-expect-100-continue", "chunked-post-of-many-chunks"],
)
def test_a_streamed_upload_sent_while_the_child_restarts_is_held_not_503(
    post_app: App, request_bytes: bytes
) -> None:
    """Before: 503 Service Unavailable at once, though no byte of the body had been read
    (with Expect: 100-continue the client had not even sent it)."""
    app = post_app
    pid = app.store.load_state().child_pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: app.proxy.current is None, 5, what="the proxy holding requests")
    upload = RawRequest(app.proxy.address, request_bytes)
    upload.join(30)
    assert upload.error is None, upload.error
    status_line = upload.answer.split(b"\r\n", 1)[0]
    size = BIG if b"Content-Length" in request_bytes[:200] else CHUNKS
    assert status_line.endswith(b" 200 OK"), upload.answer[:200]
    assert upload.answer.endswith(b"1.0.0 %d" % size), upload.answer[-100:]
    # Served by the restarted child (state.json names it a moment after the switch).
    wait_for(lambda: app.store.load_state().child_pid not in (None, pid), 5, what="restarted")


def test_many_pipelined_requests_sent_while_the_child_restarts_are_all_answered(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """A client pipelining more than 64 KiB of requests: all answered outside a hold. Sent
    during a restart's hold, the proxy read the ones behind the held request, took them
    for too many, and closed the connection: not one answer (the client saw EOF)."""
    publish_version(feed, "1.0.0")
    app = App(make_config(feed, tmp_path / "data"))
    app.start()
    try:
        wait_for(running(app, "1.0.0"), what="1.0.0 serving")
        time.sleep(1.2)  # past its probation: a crash now is restarted, requests held
        count = 2000  # 36 bytes each: 72 KB
        pipelined = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n" * (count - 1)
        pipelined += b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        before = RawRequest(app.proxy.address, pipelined)  # no hold: all answered
        before.join(30)
        assert before.error is None and before.answer.count(b" 200 OK\r\n") == count
        pid = app.store.load_state().child_pid
        assert pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: app.proxy.current is None, 5, what="the proxy holding requests")
        during = RawRequest(app.proxy.address, pipelined)
        during.join(30)
        assert during.error is None, during.error
        assert during.answer.count(b" 200 OK\r\n") == count, during.answer[:200]
        assert during.answer.endswith(b"\r\n\r\n1.0.0")
    finally:
        app.stop()
