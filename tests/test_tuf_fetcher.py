"""ngclient's network layer on HttpClient, against servers that misbehave on purpose."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from httpfiles import FileServer
from tuf.api import exceptions

from trayupdater.cancel import CancelledError, Interrupt
from trayupdater.http_client import HttpClient, HttpRefused
from trayupdater.sources.tuf_fetcher import HttpFetcher, HttpStatusError


class DripServer:
    """Answers 200 with a long Content-Length, then one byte every ``every`` seconds."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while not self.stop.wait(self.every):
                try:
                    conn.sendall(b" ")
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def drip() -> Iterator[DripServer]:
    server = DripServer()
    yield server
    server.close()


def read_all(fetcher: HttpFetcher, url: str) -> bytes:
    return b"".join(fetcher.fetch(url))


def test_a_drip_feeding_server_meets_the_deadline(drip: DripServer) -> None:
    fetcher = HttpFetcher(HttpClient(), timeout=(5, 5), deadline=1.0)
    started = time.monotonic()
    with pytest.raises(exceptions.SlowRetrievalError):
        read_all(fetcher, f"http://127.0.0.1:{drip.port}/metadata/timestamp.json")
    assert time.monotonic() - started < 10


def test_an_interrupt_stops_a_fetch_within_a_moment(drip: DripServer) -> None:
    interrupt = Interrupt()
    fetcher = HttpFetcher(HttpClient(interrupt=interrupt), timeout=(5, 30), deadline=60)
    threading.Timer(0.5, interrupt.request, args=("quit",)).start()
    started = time.monotonic()
    with pytest.raises(CancelledError):
        read_all(fetcher, f"http://127.0.0.1:{drip.port}/metadata/timestamp.json")
    assert time.monotonic() - started < 10


def test_http_errors_carry_status_and_retry_after() -> None:
    with FileServer() as server:
        server.faults.status = 429
        fetcher = HttpFetcher(HttpClient())
        with pytest.raises(HttpStatusError) as caught:
            read_all(fetcher, server.url("/metadata/timestamp.json"))
        assert caught.value.status_code == 429
        assert caught.value.retry_after is None  # no header sent


def test_retry_after_as_an_http_date() -> None:
    import requests

    from trayupdater.sources.tuf_fetcher import _retry_after

    response = requests.Response()
    response.headers["Retry-After"] = formatdate(time.time() + 90, usegmt=True)
    assert 80 < (_retry_after(response) or 0) <= 90
    response.headers["Retry-After"] = "99999999999"
    assert _retry_after(response) == 24 * 3600.0  # a hostile hint is capped
    response.headers["Retry-After"] = "soon"
    assert _retry_after(response) is None


def test_a_redirect_off_loopback_is_refused_before_it_is_sent() -> None:
    with FileServer({"/metadata/timestamp.json": b"{}"}) as server:
        server.faults.redirects["/metadata/timestamp.json"] = "http://updates.example.com/t"
        fetcher = HttpFetcher(HttpClient())
        with pytest.raises(exceptions.DownloadError) as caught:
            read_all(fetcher, server.url("/metadata/timestamp.json"))
        assert isinstance(caught.value.__cause__, HttpRefused)
