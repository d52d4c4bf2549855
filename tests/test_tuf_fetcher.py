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
    """Answers ``head`` (by default 200 with a long Content-Length), then one byte every
    ``every`` seconds: of the body, or of a header when ``head`` stops inside one."""

    def __init__(
        self, every: float = 0.1, head: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    ) -> None:
        self.every = every
        self.head = head
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
            conn.sendall(self.head)
            while not self.stop.wait(self.every):
                try:
                    conn.sendall(b"a")
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


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nX-Slow: ", b"HTTP/1.1 "],
    ids=["a header", "the status line"],
)
def test_a_server_dripping_its_headers_meets_the_deadline(head: bytes) -> None:
    """The deadline starts before the request: a drip before the body ends the fetch too
    (it used to start once all headers were in, so the drip held the check for weeks)."""
    server = DripServer(head=head)
    fetcher = HttpFetcher(HttpClient(), timeout=(5, 5), deadline=1.0)
    outcome: list[BaseException | None] = []

    def fetch() -> None:
        try:
            read_all(fetcher, f"http://127.0.0.1:{server.port}/metadata/timestamp.json")
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=fetch, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(4)
    took = time.monotonic() - started
    server.close()  # ends the drip, should the fetch not have
    worker.join(10)
    assert took < 4, "the fetch outlived its deadline"
    assert isinstance(outcome[0], exceptions.SlowRetrievalError)
    assert "not finished after 1 s" in str(outcome[0])


def test_a_fetch_done_in_time_is_not_cut_off_later() -> None:
    """The deadline belongs to one request: the connection it leaves in the pool is not shut
    down when that deadline passes, and the next fetch has a deadline of its own."""
    with FileServer({"/metadata/timestamp.json": b"{}"}) as server:
        fetcher = HttpFetcher(HttpClient(), timeout=(5, 5), deadline=0.5)
        url = server.url("/metadata/timestamp.json")
        assert read_all(fetcher, url) == b"{}"
        time.sleep(0.8)
        assert read_all(fetcher, url) == b"{}"
        assert [hit.status for hit in server.hits] == [200, 200]


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
