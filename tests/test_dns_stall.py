"""A DNS server that never answers must not hold a check past its deadline, nor Quit.

getaddrinfo blocks before there is a socket to shut down, so neither the deadline nor the
Interrupt could reach it: a laptop on a network whose DNS server swallows queries waited the
resolver's timeout times its attempts (10 s by default, minutes with some settings) for each
try, and Quit with it.

The stall is real: a UDP server on loopback port 53 that reads queries and never answers, made
the resolver of a process in a mount namespace of its own (``unshare``, a bind-mounted
``/etc/resolv.conf``), so nothing outside the test sees it. Needs root and unshare; skipped
otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Instance, wait_for
from trayupdater.children import free_port

NAME = "api.stalled-dns.test"
RESOLVER = "127.0.0.77"  # loopback, not the 127.0.0.1 some machines run a resolver on
RESOLVER_TIMEOUT = 20  # seconds per try: far longer than any wait the tests allow


class SilentResolver:
    """Reads DNS queries on RESOLVER:53 and answers none; remembers the names asked for."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((RESOLVER, 53))
        self.sock.settimeout(0.2)
        self.asked: list[str] = []
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                query, _peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.asked.append(_question(query))

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


def _question(query: bytes) -> str:
    """The name in a DNS query's question (labels after the 12-byte header)."""
    labels, at = [], 12
    while at < len(query) and query[at]:
        size = query[at]
        labels.append(query[at + 1 : at + 1 + size].decode("ascii", "replace"))
        at += 1 + size
    return ".".join(labels)


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _namespaces_work(),
    reason="needs Linux, root and unshare (a resolver of the test's own)",
)


@pytest.fixture
def silent_resolver(tmp_path: Path) -> Iterator[tuple[SilentResolver, Path]]:
    try:
        resolver = SilentResolver()
    except OSError as exc:
        pytest.skip(f"cannot listen on {RESOLVER}:53 ({exc})")
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {RESOLVER}\noptions timeout:{RESOLVER_TIMEOUT} attempts:1\n")
    yield resolver, conf
    resolver.close()


def _with_resolver(conf: Path, command: list[str]) -> list[str]:
    """``command`` in a mount namespace whose /etc/resolv.conf is ``conf``."""
    mount = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    namespace = ["unshare", "--mount", "--propagation", "private"]
    return [*namespace, "sh", "-c", mount, str(conf), *command]


def test_a_check_ends_at_its_deadline_when_dns_does_not_answer(
    silent_resolver: tuple[SilentResolver, Path],
) -> None:
    resolver, conf = silent_resolver
    script = textwrap.dedent(f"""
        import json, time
        from trayupdater.sources.github import GitHubSource
        source = GitHubSource(
            "acme/app", api_url="https://{NAME}", timeout=(1.0, 1.0),
            answer_deadline=1.0, retries=0,
        )
        started = time.monotonic()
        try:
            source.check()
            error = None
        except Exception as exc:
            error = f"{{type(exc).__name__}}: {{exc}}"
        print(json.dumps({{"error": error, "seconds": time.monotonic() - started}}))
    """)
    run = subprocess.run(
        _with_resolver(conf, [sys.executable, "-c", script]),
        capture_output=True,
        text=True,
        timeout=3 * RESOLVER_TIMEOUT,
    )
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.splitlines()[-1])
    assert NAME in resolver.asked, "the lookup never reached the silent resolver"
    assert outcome["seconds"] < 10, outcome  # the deadline is 1 s; the resolver waits 20
    assert outcome["error"].startswith("SourceError"), outcome
    assert f"the DNS server did not answer for {NAME}" in outcome["error"], outcome


def test_quit_is_not_held_by_a_name_lookup(
    silent_resolver: tuple[SilentResolver, Path], tmp_path: Path
) -> None:
    resolver, conf = silent_resolver
    inst = Instance(None, tmp_path / "data", free_port(), source=["--api-url", f"https://{NAME}"])
    proc = subprocess.Popen(
        _with_resolver(
            conf, [sys.executable, "-m", "trayupdater", *inst.args, "run", "--headless"]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=inst.env,
    )
    try:
        # Nothing is installed, so the app checks at once: its worker is now in the lookup.
        wait_for(lambda: NAME in resolver.asked, 30, "the app's first check")
        started = time.monotonic()
        quit_run = inst.cli("quit", timeout=3 * RESOLVER_TIMEOUT)
        proc.wait(timeout=3 * RESOLVER_TIMEOUT)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert quit_run.returncode == 0, quit_run.stderr
    assert proc.returncode == 0
    assert took < 12, f"Quit took {took:.1f} s; the resolver holds a lookup {RESOLVER_TIMEOUT} s"


def test_each_address_of_a_name_is_tried_in_turn(tmp_path: Path) -> None:
    """The lookup is ours now, so the fallback urllib3 did is ours too: a name with two
    addresses, the first refusing, still reaches the server on the second."""
    server = socket.create_server(("127.0.0.79", 0))  # and nothing on 127.0.0.1
    port = server.getsockname()[1]
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.79 localhost\n127.0.0.1 localhost\n")
    script = textwrap.dedent(f"""
        import socket
        from trayupdater.http_client import HttpClient
        print([info[4][0] for info in socket.getaddrinfo("localhost", {port})])
        response = HttpClient().get("http://localhost:{port}/", timeout=5)
        print(response.status_code, response.text)
    """)
    answered = threading.Thread(target=_answer_once, args=(server,), daemon=True)
    answered.start()
    mount = 'mount --bind "$0" /etc/hosts && exec "$@"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(hosts)]
    run = subprocess.run(
        [*command, sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    server.close()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("['127.0.0.1'"), lines  # the refusing address comes first
    assert lines[-1] == "200 hello", lines


def _answer_once(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
