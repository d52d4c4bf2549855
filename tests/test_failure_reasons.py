"""A failed request is told in a few words a user can act on, not as urllib3's repr chain.

Real failures on loopback: a closed port, servers that answer garbage, close at once, send a
header line too long, speak plain HTTP to a TLS client, and proxies that refuse the tunnel
with whatever reason phrase they like. Each message is one line and shows no query string,
no password and nothing unprintable that a peer sent.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
from collections.abc import Iterator

import pytest
from raw_server import RawServer

from trayupdater.errors import SourceError
from trayupdater.network import Network
from trayupdater.shown import LogFormatter
from trayupdater.sources.github import GitHubSource

PASSWORD = "pr0xy-PA55"


@contextlib.contextmanager
def answering(reply: bytes | None) -> Iterator[int]:
    """A loopback port whose every connection gets ``reply`` (None: closed at once)."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(2)
        conn.recv(65536)
        if reply is not None:
            conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):  # until the client is done
                pass

    with RawServer(handle) as server:
        yield server.port


def check_error(api_url: str, proxy: str | None = None) -> str:
    source = GitHubSource(
        "acme/app",
        api_url=api_url,
        network=Network(proxy=proxy),
        timeout=(2.0, 2.0),
        answer_deadline=5.0,
        retries=0,
    )
    try:
        with pytest.raises(SourceError) as failed:
            source.check()
    finally:
        source.close()
    message = str(failed.value)
    assert "\n" not in message and PASSWORD not in message, message
    for noise in ("Max retries", "Caused by", "Pool(", "Errno", "Error("):
        assert noise not in message, message
    return message


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (None, "the connection was closed before an answer came"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "the answer was not HTTP"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", "header line was too long"),
    ],
)
def test_a_server_that_does_not_speak_http_is_named_for_what_it_did(
    reply: bytes | None, said: str
) -> None:
    with answering(reply) as port:
        assert check_error(f"http://127.0.0.1:{port}").endswith(said)


def test_a_closed_port_is_connection_refused() -> None:
    assert check_error(f"http://127.0.0.1:{closed_port()}").endswith("connection refused")


def test_plain_http_where_tls_was_expected_is_a_failed_handshake() -> None:
    with answering(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as port:
        message = check_error(f"https://127.0.0.1:{port}")
    assert "the TLS handshake failed (" in message, message


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        (b"407 Proxy Authentication Required", "407 Proxy Authentication Required; check"),
        (b"403 Forbidden", "403 Forbidden"),
        (b"502 \x1b[31mred\x07 " + b"x" * 5000, "502 ?[31mred? xxx"),
    ],
)
def test_a_proxy_refusing_the_tunnel_says_what_it_answered(reason: bytes, shown: str) -> None:
    """Was urllib3's chain: "TLSPool(host=..., port=443): Max retries exceeded with url:
    /repos/... (Caused by ProxyError('Unable to connect to proxy', OSError('Tunnel
    connection failed: 407 Proxy Authentication Required')))"."""
    with answering(b"HTTP/1.1 " + reason + b"\r\nContent-Length: 0\r\n\r\n") as port:
        proxy = f"http://fleet:{PASSWORD}@127.0.0.1:{port}"
        message = check_error("https://api.github.test", proxy)
    assert f"through the proxy http://127.0.0.1:{port}: the proxy refused to open a tunnel" in (
        message
    ), message
    assert shown in message and len(message) < 300, message
    assert "\x1b" not in message and "\x07" not in message


# --- a secret sent back ------------------------------------------------------------------------

TOKEN = "ghp_ECHOEDTOKEN4c1e0b77d2a9"


def http_answer(content_type: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


@contextlib.contextmanager
def app_log() -> Iterator[io.StringIO]:
    """What the app's log file would hold (its formatter), at DEBUG."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize(
    "reply",
    [
        http_answer(f"text/html; x={TOKEN}", b"<html></html>"),  # quoted in "not JSON"
        http_answer(  # a tag that is not a version is logged as skipped
            "application/json",
            json.dumps(
                {"tag_name": TOKEN, "draft": False, "prerelease": False, "assets": []}
            ).encode(),
        ),
    ],
)
def test_a_token_the_api_sends_back_is_in_no_message_and_no_log(reply: bytes) -> None:
    """The API gets the token; if it quotes it back (in a header, a tag), the error on the
    status line and the log line must not carry it on."""
    message = ""
    with answering(reply) as port, app_log() as log:
        source = GitHubSource(
            "acme/app", api_url=f"http://127.0.0.1:{port}", token=TOKEN, retries=0
        )
        try:
            source.check()
        except SourceError as exc:
            message = str(exc)
        finally:
            source.close()
    shown = message + log.getvalue()
    assert TOKEN not in shown, shown
    assert "***" in shown  # it was sent back, and hidden
