"""Connections past the descriptor limit (or select()'s) never lock new clients out.

Real parts: the proxy runs in its own process, with the descriptor limit a desktop has (or
with the select() poller Windows has), in front of a real backend; this process opens the
idle connections any local program could.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from proxy_support import TIMEOUT, RealBackend

SERVE = textwrap.dedent(
    """
    import json, resource, selectors, sys, time
    limit, poller, backend_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))  # soft = hard: no raising
    if poller == "select":  # what Windows has
        selectors.DefaultSelector = selectors.SelectSelector
        from trayupdater.proxy import poller as p
        p.KIND = "selectors"
    from trayupdater.proxy import Backend, ReverseProxy
    proxy = ReverseProxy("127.0.0.1", 0, workers=8, client_idle_timeout=60)
    proxy.start()
    proxy.switch(Backend("127.0.0.1", backend_port, "v1"))
    print(json.dumps({"port": proxy.address[1]}), flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def backend() -> Iterator[RealBackend]:
    made = RealBackend("v1")
    yield made
    made.close()


def _serve(limit: int, poller: str, backend: RealBackend) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(limit), poller, str(backend.backend.port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, json.loads(proc.stdout.readline())["port"]


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


@pytest.mark.parametrize(
    ("limit", "poller", "idle"),
    # select() on Linux fails past descriptor 1023 (Windows: past 512 sockets).
    [(256, "epoll", 400), (4096, "select", 1100)],
    ids=["descriptor-limit", "select-limit"],
)
def test_idle_connections_past_the_limit_do_not_lock_out_a_new_client(
    backend: RealBackend, limit: int, poller: str, idle: int
) -> None:
    """Before: past the limit accept() failed (EMFILE) or select() raised and the
    dispatcher died; a fresh GET waited for ever."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < idle + 64:  # this process holds the client ends
        if hard != resource.RLIM_INFINITY and hard < idle + 64:
            pytest.skip(f"needs {idle + 64} descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (idle + 64, hard))
    proc, port = _serve(limit, poller, backend)
    held: list[socket.socket] = []
    try:
        for _ in range(idle):  # each asks once, then stays idle: a kept-alive client
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(sock)
        for sock in held[-20:]:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")  # the latest were served
        started = time.monotonic()
        for _ in range(3):
            assert _get(port).startswith(b"HTTP/1.1 200 "), "a new client is served"
        assert time.monotonic() - started < 5
        assert proc.poll() is None
    finally:
        for sock in held:
            sock.close()
        proc.kill()
        proc.wait()
