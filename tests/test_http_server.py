"""The in-process HTTP servers (the demo's release feed, the control endpoint) and clients
that hang up: the app cancelling a check when it quits, a CLI giving up after its timeout.

A hang-up must not print a traceback on the user's terminal (the demo's terminal tells a
story; a traceback there reads as a crash), and the server must go on serving.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from support import wait_for

from trayupdater.feed import ReleaseFeed
from trayupdater.http_server import DeadlineRequestHandler, ThreadingServer


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trayupdater.http_server"]


# What socketserver prints above the traceback of a failed request (other tests' log
# handlers may still write to stderr here, so stderr is checked for this line, not for any
# traceback).
SOCKETSERVER_TRACEBACK = "Exception occurred during processing of request from"

BIG = 32 * 1024 * 1024  # more than loopback's socket buffers hold: the feed is mid-write


def _hang_up_mid_download(feed: ReleaseFeed, asset_id: int) -> None:
    host, port = feed.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET /download/{asset_id}/big HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(65536)  # the head and the first body bytes: the feed is writing
        # RST instead of FIN: the feed's next write fails at once (reset / broken pipe).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _asset_id(feed: ReleaseFeed) -> int:
    with urllib.request.urlopen(f"{feed.url}/repos/o/app/releases/latest", timeout=5) as r:
        release = json.load(r)
    return next(a["id"] for a in release["assets"] if a["name"] == "big")


def test_a_client_hanging_up_mid_answer_prints_no_traceback(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with ReleaseFeed().start() as feed:
        feed.publish("o/app", "v1.0.0", {"big": b"x" * BIG}, checksums=False)
        asset = _asset_id(feed)
        with caplog.at_level(logging.DEBUG, logger="trayupdater.http_server"):
            for _ in range(3):
                _hang_up_mid_download(feed, asset)
            wait_for(
                lambda: sum("hung up" in r.getMessage() for r in _records(caplog)) == 3,
                what="three hang-ups in the log",
            )
            assert _asset_id(feed) == asset  # and the feed still answers
    assert SOCKETSERVER_TRACEBACK not in capfd.readouterr().err


def test_any_other_handler_error_goes_to_the_log_with_its_traceback(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(ThreadingServer):
        def finish_request(self, request: object, client_address: object) -> None:
            raise ValueError("a handler bug")

    server = Broken(("127.0.0.1", 0), object)  # type: ignore[arg-type]
    try:
        with (
            caplog.at_level(logging.ERROR, logger="trayupdater.http_server"),
            socket.create_connection(server.server_address[:2], timeout=5),
        ):
            server.handle_request()  # the handler runs on its own thread
            wait_for(lambda: _records(caplog), what="the error in the log")
    finally:
        server.server_close()
    assert SOCKETSERVER_TRACEBACK not in capfd.readouterr().err
    (record,) = _records(caplog)
    assert record.exc_info is not None and "a handler bug" in str(record.exc_info[1])


# -- idle: no wake-ups on a timer --------------------------------------------------------


class _CountingServer(ThreadingServer):
    loops = 0

    def service_actions(self) -> None:  # socketserver calls it once per loop
        self.loops += 1


def test_an_idle_server_does_not_wake_and_stops_at_once() -> None:
    from http.server import BaseHTTPRequestHandler

    server = _CountingServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    time.sleep(0.6)
    assert server.loops == 0, "serve() must not poll while idle (serve_forever(0.1) did)"
    started = time.monotonic()
    server.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0, "stop() wakes the loop, it does not wait for it"
    server.server_close()


# -- bounds: slow and silent clients, too many at once, a failing loop -------------------


class _Hello(DeadlineRequestHandler):
    request_seconds = 1.0
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serving(server: ThreadingServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    return thread


def _get(port: int, timeout: float = 5.0) -> bytes:
    """One whole request; the raw answer up to the server's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _read_to_close(sock)


def _read_to_close(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_a_request_dripping_in_is_cut_at_its_deadline() -> None:
    """A byte every 0.3 s never trips a per-read timeout; the whole head gets 1 s."""
    server = ThreadingServer(("127.0.0.1", 0), _Hello)
    _serving(server)
    port = server.server_address[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\n")
            closed = False
            for _ in range(15):  # 4.5 s of dripping unless the server hangs up
                time.sleep(0.3)
                try:
                    sock.sendall(b"X")
                except OSError:
                    closed = True
                    break
                sock.setblocking(False)
                try:
                    closed = sock.recv(1024) == b""
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    closed = True
                sock.setblocking(True)
                if closed:
                    break
            assert closed, "the server still waits for a request dripping in"
            assert time.monotonic() - started < 2.5
        assert _get(port).startswith(b"HTTP/1.1 200")  # prompt clients are still served
    finally:
        server.stop()
        server.server_close()


def test_an_idle_keep_alive_connection_is_closed_after_the_deadline() -> None:
    server = ThreadingServer(("127.0.0.1", 0), _Hello)
    _serving(server)
    try:
        with socket.create_connection(server.server_address[:2], timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"hello"):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert _read_to_close(sock) == b""  # then nothing: the server closes
            assert time.monotonic() - started < 2.5
    finally:
        server.stop()
        server.server_close()


class _Patient(_Hello):
    request_seconds = 10.0  # silent clients keep their slots for the whole test


def test_connections_beyond_the_cap_get_503_at_once() -> None:
    server = ThreadingServer(("127.0.0.1", 0), _Patient, max_connections=3)
    _serving(server)
    port = server.server_address[1]
    threads_before = threading.active_count()
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        wait_for(lambda: threading.active_count() >= threads_before + 3, what="3 handlers")
        extra = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        started = time.monotonic()
        for sock in extra:
            answer = _read_to_close(sock)  # answered without sending anything
            sock.close()
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"too many open connections" in answer
        assert time.monotonic() - started < 2.0  # at once, not at the silent ones' deadline
        assert threading.active_count() <= threads_before + 3  # no thread per extra one
        silent.pop().close()  # a slot frees up
        wait_for(lambda: _get(port).startswith(b"HTTP/1.1 200"), what="served again")
    finally:
        for sock in silent:
            sock.close()
        server.stop()
        server.server_close()


def test_the_loop_survives_an_error_in_it(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(ThreadingServer):
        failures = 1

        def service_actions(self) -> None:  # runs in the loop, outside any handler
            if self.failures:
                self.failures -= 1
                raise RuntimeError("a loop bug")

    server = Flaky(("127.0.0.1", 0), _Hello)
    thread = _serving(server)
    try:
        with caplog.at_level(logging.ERROR, logger="trayupdater.http_server"):
            assert _get(server.server_address[1]).startswith(b"HTTP/1.1 200")  # trips it
            assert _get(server.server_address[1]).startswith(b"HTTP/1.1 200")  # served on
        assert any("a loop bug" in str(r.exc_info[1]) for r in _records(caplog) if r.exc_info)
        assert thread.is_alive()
    finally:
        server.stop()
        server.server_close()
    thread.join(5)
    assert not thread.is_alive()  # and stop() still ends it


_LOW_FD_SERVER = """
import os, resource, sys, threading
from trayupdater.http_server import ThreadingServer

from test_http_server import _Patient

server = ThreadingServer(("127.0.0.1", 0), _Patient)  # its backlog holds what it cannot accept
threading.Thread(target=server.serve, daemon=True).start()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 4, hard))
print(server.server_address[1], flush=True)
sys.stdin.read()
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and RLIMIT_NOFILE")
def test_out_of_descriptors_the_loop_pauses_then_recovers() -> None:
    """accept() failing with EMFILE leaves the listening socket readable: the loop must not
    spin on it, and must serve again once descriptors are free."""
    tests = os.path.dirname(__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOW_FD_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    held: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        # Silent connections until the server cannot accept any more (each costs it an fd).
        for _ in range(20):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)  # the backlog holds the rest; accept() now fails with EMFILE
        before = _cpu_seconds(proc.pid)
        time.sleep(2.0)
        used = _cpu_seconds(proc.pid) - before
        assert used < 0.5, f"the loop spun: {used:.2f} s of CPU in 2 s"
        for sock in held:
            sock.close()
        held.clear()
        wait_for(lambda: _get(port, timeout=2).startswith(b"HTTP/1.1 200"), what="serving again")
    finally:
        for sock in held:
            sock.close()
        proc.kill()
        proc.wait()
