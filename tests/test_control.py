"""The loopback control endpoint and the Prometheus metrics it serves."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import requests
from support import wait_for
from test_runtime import get

from trayupdater.app import App
from trayupdater.control import CONTROL_FILE, ControlBusyError, ControlClient, ControlServer
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.shown import LogFormatter
from trayupdater.status import Command, Status


def test_token_file_is_private_and_required(app: App) -> None:
    path = app.config.data_dir / CONTROL_FILE
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    info = json.loads(path.read_text())
    base = f"http://127.0.0.1:{info['port']}"
    assert requests.get(f"{base}/status", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.post(f"{base}/rollback", headers=wrong, timeout=5).status_code == 401
    good = {"Authorization": f"Bearer {info['token']}"}
    status = requests.get(f"{base}/status", headers=good, timeout=5).json()
    assert status["active"] == "1.0.0"
    assert status["headline"] == "simple-server 1.0.0 — running"


def test_control_binds_loopback_only(app: App) -> None:
    assert app.control._server.server_address[0] == "127.0.0.1"
    assert app.proxy.address[0] == "127.0.0.1"


def test_client_finds_the_app_and_the_file_goes_with_it(app: App) -> None:
    client = ControlClient.find(app.config.data_dir)
    assert client is not None and client.pid == os.getpid()
    assert client.command(Command.CHECK)["message"].startswith("Up to date")
    app.stop()
    assert not (app.config.data_dir / CONTROL_FILE).exists()
    assert ControlClient.find(app.config.data_dir) is None


def test_stale_control_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / CONTROL_FILE).write_text('{"port": 9, "token": "x", "pid": 1}')
    assert ControlClient.find(tmp_path) is None


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_what_happened(app: App, feed: ReleaseFeed) -> None:
    import http.client

    conn = http.client.HTTPConnection(*app.proxy.address, timeout=5)
    for _ in range(5):
        conn.request("GET", "/version")
        conn.getresponse().read()
    publish_version(feed, "1.1.0")
    app.updater.request(Command.CHECK)
    time.sleep(1.2)  # probation
    app.updater.request(Command.ROLLBACK)
    feed.inject("500", "/releases", times=5)
    app.updater.request(Command.CHECK)

    url = f"http://127.0.0.1:{app.control.port}/metrics"
    text = requests.get(url, timeout=5).text  # open on loopback: no token needed to scrape
    assert metric(text, 'trayupdater_proxy_requests_total{code="200"}') >= 5
    assert metric(text, "trayupdater_proxy_request_seconds_count") >= 5
    assert metric(text, "trayupdater_updates_total") == 2  # first install and 1.1.0
    assert metric(text, 'trayupdater_rollbacks_total{kind="manual"}') == 1
    assert metric(text, 'trayupdater_failures_total{reason="source"}') == 1
    assert metric(text, 'trayupdater_checks_total{outcome="updated"}') == 2
    assert metric(text, "trayupdater_download_bytes_total") > 1000
    assert 'trayupdater_active_info{version="1.0.0"}' in text


def test_update_control_payloads_are_checked_at_the_endpoint(app: App) -> None:
    info = json.loads((app.config.data_dir / CONTROL_FILE).read_text())
    base = f"http://127.0.0.1:{info['port']}"
    auth = {"Authorization": f"Bearer {info['token']}"}
    for path in (
        "/pause?seconds=inf",
        "/pause?seconds=-1",
        "/pause?seconds=1e30",
        "/pause?seconds=abc",
        "/skip?version=../../etc",
        "/skip",
        "/allow?version=" + "9" * 200,
    ):
        answer = requests.post(base + path, headers=auth, timeout=10)
        assert answer.status_code == 400, path
        assert "error" in answer.json()
    assert app.updater.status().paused is False  # nothing reached the worker
    ok = requests.post(base + "/pause?seconds=60", headers=auth, timeout=10)
    assert ok.status_code == 200 and ok.json()["paused"] is True


def test_a_second_launch_reaches_the_running_apps_activate_hook(app: App) -> None:
    seen: list[str] = []
    app.on_activate.append(lambda: seen.append("activated"))
    client = ControlClient.find(app.config.data_dir)
    assert client is not None
    client.activate()
    assert seen == ["activated"]


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one raw request; (status, body). Host and Origin are exactly what we write."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    ("host", "origin", "expected"),
    [
        ("evil.example", None, 421),  # DNS rebinding: a page of evil.example on 127.0.0.1
        ("evil.example:{port}", None, 421),
        ("127.0.0.1.evil.example", None, 421),
        (None, None, 421),  # no Host at all
        ("[::1]evil.example", None, 421),  # was read as [::1]
        ("[::1", None, 421),
        ("127.0.0.1:8²", None, 421),
        ("127.0.0.1:{port}", "http://evil.example", 403),  # a page elsewhere, fetch()ing us
        ("localhost:{port}", "null", 403),
        ("127.0.0.1:{port}", None, 200),
        ("localhost:{port}", "http://localhost:3000", 200),
        ("[::1]:{port}", None, 200),
    ],
)
def test_metrics_and_control_answer_only_loopback_names(
    app: App, host: str | None, origin: str | None, expected: int
) -> None:
    port = app.control.port
    lines = ["GET /metrics HTTP/1.1"]
    if host is not None:
        lines.append("Host: " + host.format(port=port))
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines.append("Connection: close")
    status, body = _raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    assert status == expected
    if expected != 200:
        assert body == b""  # nothing for a foreign page to read
    else:
        assert b"trayupdater_checks" in body


def test_commands_refuse_foreign_hosts_even_with_the_token(app: App) -> None:
    info = json.loads((app.config.data_dir / CONTROL_FILE).read_text())
    request = (
        f"POST /rollback HTTP/1.1\r\nHost: evil.example\r\n"
        f"Authorization: Bearer {info['token']}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode()
    status, body = _raw(info["port"], request)
    assert (status, body) == (421, b"")
    assert app.updater.status().active == "1.0.0"  # nothing was rolled back


def test_too_many_query_fields_get_400_with_a_json_error(app: App) -> None:
    """parse_qs(max_num_fields=8) raises: the client got no answer at all."""
    info = json.loads((app.config.data_dir / CONTROL_FILE).read_text())
    path = "/pause?a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {info['token']}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, body = _raw(info["port"], request)
    assert status == 400
    assert json.loads(body) == {"error": "the query string has more than 8 fields"}
    assert app.updater.status().paused is False


def test_silent_clients_cannot_pin_the_control_port(app: App) -> None:
    """Anyone on the machine can connect: a flood of half-sent requests gets a thread each
    only up to the cap (the rest are answered 503 at once), so the app keeps its file
    descriptors, the proxy serves, and the control port answers again once they are gone."""
    import socket

    from trayupdater.control import MAX_CONNECTIONS

    port = app.control.port
    threads_before = threading.active_count()
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS * 4):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # half a request, never finished
            held.append(sock)
        assert threading.active_count() <= threads_before + MAX_CONNECTIONS + 2
        started = time.monotonic()
        busy = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert busy.status_code == 503 and "too many" in busy.json()["error"]
        assert time.monotonic() - started < 2.0  # answered at once, not left waiting
        assert get(app)[:2] == (200, "1.0.0")  # the proxy is untouched
        # Still found (a second launch must not start beside it), and told why it is mute.
        client = ControlClient.find(app.config.data_dir)
        assert client is not None
        with pytest.raises(ControlBusyError, match="503: too many open connections"):
            client.status()
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: ControlClient.find(app.config.data_dir) is not None, what="answers again")


def _control_server(tmp_path: Path, **bounds: float) -> ControlServer:
    server = ControlServer(
        tmp_path,
        status=Status,
        request=lambda command, timeout, payload: Status(),
        send=lambda command, payload: None,
        **bounds,  # type: ignore[arg-type]
    )
    server.start()
    return server


def test_a_control_request_dripping_in_is_cut_at_its_deadline(tmp_path: Path) -> None:
    """A client sending a byte every 0.4 s never trips a per-read timeout: the whole
    request must arrive within request_seconds."""
    import socket

    server = _control_server(tmp_path, request_seconds=1.0)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            sock.settimeout(0.4)
            answer: bytes | None = None
            while answer is None and time.monotonic() - started < 5:
                try:
                    sock.sendall(b"X")
                    answer = sock.recv(1024)  # b"": the server hung up
                except TimeoutError:
                    continue
                except OSError:
                    answer = b""
            assert answer == b"", "the control server still waits for the request"
            assert time.monotonic() - started < 2.5
        client = ControlClient.find(tmp_path)  # prompt clients are served as before
        assert client is not None and client.status()["phase"] == "starting"
    finally:
        server.close()


def test_the_control_token_is_kept_out_of_the_log(tmp_path: Path) -> None:
    """Put in a URL (by a user, a script), it went into the request line logged with
    --verbose, and from there into a bug report."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    collect = Collect(logging.DEBUG)
    collect.setFormatter(LogFormatter("%(message)s"))  # the app's formatter, as with --verbose
    logger = logging.getLogger("trayupdater.control")
    logger.addHandler(collect)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    server = _control_server(tmp_path)
    try:
        url = f"http://127.0.0.1:{server.port}/status?token={server.token}"
        requests.get(url, timeout=5)
    finally:
        server.close()
        logger.removeHandler(collect)
        logger.setLevel(level)
    assert any("/status?token=" in line for line in lines), lines
    assert not any(server.token in line for line in lines), lines
