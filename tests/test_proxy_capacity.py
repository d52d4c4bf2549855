"""Connections past the descriptor limit (or select()'s) never lock new clients out.

Real parts: the proxy runs in its own process, with the descriptor limit a desktop has (or
with the select() poller Windows has), in front of a real backend; this process opens the
idle connections any local program could.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
from proxy_support import TIMEOUT, RealBackend

SERVE = textwrap.dedent(
    """
    import json, resource, selectors, sys, time
    options = json.loads(sys.argv[1])
    limit = options.get("limit")
    if limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))  # soft = hard: no raising
    if options.get("poller") == "select":  # what Windows has
        selectors.DefaultSelector = selectors.SelectSelector
        from trayupdater.proxy import poller as p
        p.KIND = "selectors"
    if options.get("capacity"):
        from trayupdater.proxy import dispatcher
        dispatcher.client_capacity = lambda *args: options["capacity"]
    from trayupdater.proxy import Backend, ReverseProxy
    proxy = ReverseProxy(
        "127.0.0.1", 0, workers=4, client_idle_timeout=options.get("idle_timeout", 60),
        header_timeout=options.get("header_timeout", 10),
    )
    proxy.start()
    proxy.switch(Backend(options.get("host", "127.0.0.1"), options["backend_port"], "v1"))
    print(json.dumps({"port": proxy.address[1]}), flush=True)
    time.sleep(120)
    """
)
REQUEST = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"


@contextlib.contextmanager
def _serve(backend: RealBackend, **options: object) -> Iterator[tuple[subprocess.Popen, int]]:
    """A proxy in a process of its own (its descriptor limit, or paused with SIGSTOP)."""
    options["backend_port"] = backend.backend.port
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, json.dumps(options)], stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc, json.loads(proc.stdout.readline())["port"]
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _paused(proc: subprocess.Popen) -> Iterator[None]:
    """What happens meanwhile reaches the proxy as one batch of events when it resumes."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGCONT)


def _kept_alive(port: int, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sock.sendall(REQUEST)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        clients.append(sock)
    return clients


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
    held: list[socket.socket] = []
    with _serve(backend, limit=limit, poller=poller) as (proc, port):
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
    for sock in held:
        sock.close()


def test_a_connection_whose_next_request_has_come_is_never_closed_for_room(
    backend: RealBackend,
) -> None:
    """The oldest kept-alive client asks again while a new one connects, both in one batch
    of events: its request, in the socket not yet read, was lost to "the longest idle"."""
    with _serve(backend, capacity=4) as (proc, port):
        clients = _kept_alive(port, 4)
        with _paused(proc):
            newcomer = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            clients[0].sendall(REQUEST)
        assert clients[0].recv(65536).startswith(b"HTTP/1.1 200 ")
        newcomer.sendall(REQUEST)
        assert newcomer.recv(65536).startswith(b"HTTP/1.1 200 "), "room was made for it"
        for sock in [*clients, newcomer]:
            sock.close()


def test_silent_connections_accepted_at_the_limit_still_time_out(backend: RealBackend) -> None:
    with _serve(backend, capacity=4, header_timeout=1) as (proc, port):
        clients = _kept_alive(port, 4)
        with _paused(proc):
            silent = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in "ab"]
            for sock in clients:
                sock.sendall(REQUEST)
        for sock in silent:
            sock.settimeout(5)
            assert sock.recv(65536) == b"", "closed at its header timeout, silently"
        for sock in [*clients, *silent]:
            sock.close()


def test_room_a_worker_frees_lets_the_next_client_in_at_once(backend: RealBackend) -> None:
    """At the limit with every connection in a worker (a backend named by host name), the
    proxy stopped accepting; a worker ending a request did not make it look again, so the
    next client waited for the next unrelated wake-up (up to 5 s)."""

    def slow() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /sleep?s=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while sock.recv(65536):
                pass

    with _serve(backend, capacity=4, host="localhost") as (_proc, port):
        threads = [threading.Thread(target=slow) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # the four slots are taken
        started = time.monotonic()
        assert _get(port).startswith(b"HTTP/1.1 200 ")
        took = time.monotonic() - started
        for thread in threads:
            thread.join()
    assert took < 2.5, f"served {took:.1f} s later; the slots were free after about 0.7 s"
