"""The in-process HTTP servers (the demo's release feed, the control endpoint) and clients
that hang up: the app cancelling a check when it quits, a CLI giving up after its timeout.

A hang-up must not print a traceback on the user's terminal (the demo's terminal tells a
story; a traceback there reads as a crash), and the server must go on serving.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
import urllib.request

import pytest
from support import wait_for

from trayupdater.feed import ReleaseFeed
from trayupdater.http_server import ThreadingServer


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
