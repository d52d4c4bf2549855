"""Property: a hostile or broken company proxy costs a clear error, never the token or a hang.

Fleets reach their release source through a forward proxy (``[network] proxy``); every
request is then a CONNECT tunnel. The proxy may be misconfigured, overloaded, a captive
portal, or an attacker on the network path. hypothesis writes a script for each connection
the app opens to a real proxy on loopback:

- the answer to CONNECT: an honest 200; a 200 with many or long headers, or a body; 407
  with or without ``Proxy-Authenticate``; 403, 302 to a portal, 500, 999; HTTP/1.0; a reason
  phrase with control characters or 5,000 bytes; garbage; nothing;
- how it comes: at once, dripped (a byte at a time within every read timeout, for ever:
  only a deadline ends it), cut or reset half way;
- after a 200: an honest tunnel to the real API (a ReleaseFeed over TLS); a tunnel to a
  man in the middle whose certificate the client does not trust; a plain-HTTP answer;
  garbage; a close, a reset, or a silence.

Checked for every example: only ``SourceError`` or ``DownloadError`` come out; the message
is one printable line that names neither the token nor the proxy's password; the check and
the download each end within their deadline plus SLACK; the token never reaches the proxy
in clear nor the man in the middle at all (judged by the bytes each received), nor any log
record; an honest proxy gets the release and the asset's exact bytes. At the end the
situations the invariants are about must have been reached.

``TRAYUPDATER_FORWARD_PROXY_EXAMPLES=N`` runs N random examples instead of the default set.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from property_settings import assert_reached, property_settings
from raw_server import RawServer
from tls import CA, make_ca

from trayupdater.demo import DEMO_REPO, child_archive
from trayupdater.download import Pace
from trayupdater.errors import DownloadError, SourceError
from trayupdater.feed import ReleaseFeed
from trayupdater.network import Network
from trayupdater.sources.github import GitHubSource

TOKEN = "ghp_FORWARDPROXYTOKEN0c2a9e71d4"
PASSWORD = "pr0xy-PA55-7731"
API_HOST = "api.github.test"
TIMEOUT = 0.4  # connect and each read
DEADLINE = 1.0  # a whole API answer, a whole download
SLACK = 2.0
DRIP = 0.05  # a byte every DRIP s: within every read timeout
HANG = 6.0  # the longest a proxy thread keeps a connection (an example's end releases it)
MAX_MESSAGE = 600

CONNECT_ANSWERS = {
    "200": b"HTTP/1.1 200 Connection established\r\n\r\n",
    "200 headers": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-%d: v\r\n" % i for i in range(150))
    + b"\r\n",
    "200 long header": b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    "200 body": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "http/1.0 200": b"HTTP/1.0 200 OK\r\n\r\n",
    "407": b"HTTP/1.1 407 Proxy Authentication Required\r\n"
    b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 0\r\n\r\n',
    "407 bare": b"HTTP/1.1 407 Who\r\n\r\n",
    "403": b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nblock!",
    "302 portal": b"HTTP/1.1 302 Found\r\nLocation: http://portal.example/login\r\n\r\n",
    "500": b"HTTP/1.1 500 Internal Server Error\r\n\r\n",
    "999": b"HTTP/1.1 999 Odd\r\n\r\n",
    "hostile reason": b"HTTP/1.1 502 \x1b[31m"
    + PASSWORD.encode()
    + b"\x07"
    + b"z" * 5000
    + b"\r\n\r\n",
    "garbage": b"SSH-2.0-OpenSSH_9.6\r\n",
    "nothing": b"",
}
DELIVERIES = ["at once", "at once", "drip", "drip forever", "cut", "reset"]
AFTER = ["tunnel", "tunnel", "untrusted tunnel", "plain http", "garbage", "close", "reset", "hang"]


@dataclass(frozen=True)
class Script:
    answer: str
    delivery: str
    after: str

    @property
    def honest(self) -> bool:
        return self.answer == "200" and self.delivery == "at once" and self.after == "tunnel"


scripts = st.builds(
    Script,
    answer=st.one_of(st.just("200"), st.sampled_from(sorted(CONNECT_ANSWERS))),
    delivery=st.sampled_from(DELIVERIES),
    after=st.sampled_from(AFTER),
)


@dataclass
class Received:
    """What the proxy and the man in the middle got from the client, all of it."""

    proxy: bytearray
    middle: bytearray


class HostileProxy(RawServer):
    """A forward proxy on loopback that plays the current example's scripts, one per
    connection in turn (the last repeats)."""

    def __init__(self, api_port: int, middle_port: int) -> None:
        self.api_port = api_port
        self.middle_port = middle_port
        self.scripts: list[Script] = []
        self.connections = 0
        self.received = Received(bytearray(), bytearray())
        self.release = threading.Event()  # set at an example's end: every thread lets go
        self.lock = threading.Lock()
        super().__init__(self._play)

    def start(self, scripts: list[Script]) -> None:
        self.release.set()
        self.release = threading.Event()
        with self.lock:
            self.scripts, self.connections = scripts, 0
            self.received = Received(bytearray(), bytearray())

    def _play(self, conn: socket.socket) -> None:
        with self.lock:
            script = self.scripts[min(self.connections, len(self.scripts) - 1)]
            self.connections += 1
            received, release = self.received, self.release
        conn.settimeout(HANG)
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                return
            head += data
        received.proxy += head
        answer = CONNECT_ANSWERS[script.answer]
        if script.delivery == "at once":
            conn.sendall(answer)
        elif script.delivery in ("drip", "drip forever"):
            endless = script.delivery == "drip forever"
            stream = answer[:-2] if endless and answer.endswith(b"\r\n\r\n") else answer
            for i in range(len(stream)):
                if release.wait(DRIP):
                    return
                conn.sendall(stream[i : i + 1])
            while endless and not release.wait(DRIP):
                conn.sendall(b"X")
        else:
            conn.sendall(answer[: len(answer) // 2])
            if script.delivery == "reset":
                _reset(conn)
            return
        if not answer.startswith(b"HTTP/1.") or b" 200 " not in answer.split(b"\r\n")[0]:
            return
        self._after(conn, script.after, received, release)

    def _after(
        self, conn: socket.socket, after: str, received: Received, release: threading.Event
    ) -> None:
        if after in ("tunnel", "untrusted tunnel"):
            port = self.api_port if after == "tunnel" else self.middle_port
            with socket.create_connection(("127.0.0.1", port), timeout=HANG) as upstream:
                _relay(conn, upstream, received.proxy, release)
        elif after == "plain http":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            _drain(conn, received.proxy, release)
        elif after == "garbage":
            conn.sendall(b"\x00\xff" * 300)
            _drain(conn, received.proxy, release)
        elif after == "reset":
            _reset(conn)
        elif after == "hang":
            _drain(conn, received.proxy, release)
        # "close": the with block closes it

    def close(self) -> None:
        self.release.set()
        super().close()


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _drain(conn: socket.socket, into: bytearray, release: threading.Event) -> None:
    conn.settimeout(DRIP)
    while not release.is_set():
        try:
            data = conn.recv(65536)
        except TimeoutError:
            continue
        if not data:
            return
        into += data


def _relay(
    client: socket.socket, upstream: socket.socket, seen: bytearray, release: threading.Event
) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        while not release.is_set():
            for key, _ in selector.select(DRIP):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                if key.fileobj is client:
                    seen += data
                key.data.sendall(data)


class MiddleServer(RawServer):
    """A man in the middle: TLS for api.github.test with a certificate of a CA the client
    does not trust. Records every byte it decrypts (there must be none)."""

    def __init__(self, ca: CA) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(ca.server_cert, ca.server_key)
        self.into: bytearray = bytearray()
        super().__init__(self._intercept)

    def _intercept(self, conn: socket.socket) -> None:
        conn.settimeout(HANG)
        with self.context.wrap_socket(conn, server_side=True) as tls:
            while data := tls.recv(65536):
                self.into += data
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")


@dataclass
class World:
    feed: ReleaseFeed
    proxy: HostileProxy
    middle: MiddleServer
    ca: CA
    asset: bytes


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("forward-proxy")
    ca = make_ca(base / "ca", hosts=[API_HOST])
    impostor = make_ca(base / "impostor", hosts=[API_HOST])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.server_cert, ca.server_key)
    with ReleaseFeed(tls=context, public_host=API_HOST) as feed:
        name, data = child_archive("1.0.0", program="simple-server")
        feed.publish(DEMO_REPO, "v1.0.0", {name: data})
        api_port = int(feed.url.rsplit(":", 1)[1])
        middle = MiddleServer(impostor)
        proxy = HostileProxy(api_port, middle.port)
        try:
            yield World(feed, proxy, middle, ca, data)
        finally:
            proxy.close()
            middle.close()


def check_message(error: BaseException) -> None:
    message = str(error)
    assert message and "\n" not in message and message.isprintable(), repr(message)
    assert TOKEN not in message and PASSWORD not in message, message
    assert len(message) <= MAX_MESSAGE, message


def play(world: World, scripts: list[Script], tmp: Path, caplog: pytest.LogCaptureFixture) -> str:
    world.proxy.start(scripts)
    world.middle.into = bytearray()
    caplog.clear()
    network = Network(
        proxy=f"http://fleet:{PASSWORD}@127.0.0.1:{world.proxy.port}", ca_bundle=world.ca.cert
    )
    source = GitHubSource(
        DEMO_REPO,
        api_url=world.feed.url,
        token=TOKEN,
        network=network,
        timeout=(TIMEOUT, TIMEOUT),
        answer_deadline=DEADLINE,
        retries=0,
    )
    outcome = "ok"
    try:
        started = time.monotonic()
        try:
            result = source.check()
        except SourceError as exc:
            check_message(exc)
            outcome = "check failed"
        finally:
            assert time.monotonic() - started < 2 * TIMEOUT + DEADLINE + SLACK
        if outcome == "ok":
            assert result.release is not None and result.release.version_text == "1.0.0"
            asset = result.release.assets[0]
            started = time.monotonic()
            try:
                fetched = source.fetch(
                    result.release,
                    asset,
                    tmp / "asset",
                    max_bytes=10**8,
                    pace=Pace(timeout=TIMEOUT, deadline=DEADLINE),
                )
                assert (tmp / "asset").read_bytes() == world.asset
                assert fetched.size == len(world.asset)
            except DownloadError as exc:
                check_message(exc)
                outcome = "download failed"
            finally:
                assert time.monotonic() - started < 2 * TIMEOUT + DEADLINE + SLACK
    finally:
        source.close()
        world.proxy.release.set()  # let hanging proxy threads go before the next example
    if all(s.honest for s in scripts):
        assert outcome == "ok", f"an honest proxy must work: {outcome}"
    assert TOKEN.encode() not in world.proxy.received.proxy  # only TLS passes the tunnel
    assert not world.middle.into  # the impostor's certificate stops everything
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN not in logged and PASSWORD not in logged
    return outcome


def test_a_hostile_forward_proxy_costs_a_clear_error_and_nothing_else(
    world: World, caplog: pytest.LogCaptureFixture, tmp_path_factory: pytest.TempPathFactory
) -> None:
    caplog.set_level(logging.DEBUG)
    stats: Counter[str] = Counter()

    @property_settings("TRAYUPDATER_FORWARD_PROXY_EXAMPLES", 60, fixtures=True)
    @given(st.lists(scripts, min_size=1, max_size=3))
    def run(case: list[Script]) -> None:
        tmp = tmp_path_factory.mktemp("example")
        outcome = play(world, case, tmp, caplog)
        stats[outcome] += 1
        for script in case:
            stats[script.delivery] += 1
            if script.after == "untrusted tunnel" and script.answer == "200":
                stats["impostor reached"] += 1

    run()
    print(dict(sorted(stats.items())))
    reached = ["ok", "check failed", "drip forever", "impostor reached"]
    assert_reached(stats, reached, "TRAYUPDATER_FORWARD_PROXY_EXAMPLES")


@pytest.mark.parametrize("answer", sorted(CONNECT_ANSWERS))
def test_each_connect_answer_at_once(
    world: World, caplog: pytest.LogCaptureFixture, tmp_path: Path, answer: str
) -> None:
    play(world, [Script(answer, "at once", "tunnel")], tmp_path, caplog)
