"""memory.py: one malloc arena for the app's threads (glibc), set by `trayupdater run`, and
freed heap given back to the OS once the proxy goes quiet.

Checked on a real process: threads allocating at the same moment, then glibc's own
``malloc_stats()`` report of its arenas (one "Arena N:" line each, on stderr); a heap with
holes in it, then its RSS from /proc before and after.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time

import pytest
from proxy_support import TIMEOUT, RealBackend

from trayupdater import cli, memory
from trayupdater.proxy import ReverseProxy, dispatcher
from trayupdater.proxy import server as proxy_server

_THREADS_ALLOCATING = r"""
import ctypes, sys, threading
from trayupdater.memory import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas()
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    for _ in range(2000):
        blocks = [bytes(70000) for _ in range(4)]  # malloc'd, not pymalloc'd
        del blocks
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _THREADS_ALLOCATING, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sum(1 for line in result.stderr.splitlines() if line.startswith("Arena "))


glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not memory.limit_malloc_arenas(),
    reason="glibc only",
)


@glibc
def test_threads_share_one_arena_once_limited() -> None:
    assert _arenas("free") > 1, "the check itself: busy threads do get arenas of their own"
    assert _arenas("limit") == 1


def test_run_limits_arenas_before_anything_else(monkeypatch, tmp_path) -> None:
    called: list[bool] = []
    monkeypatch.setattr(memory, "limit_malloc_arenas", lambda: called.append(True) or True)
    bad = tmp_path / "bad.toml"
    bad.write_text("[proxy]\nport = 'not a number'\n")
    assert cli.main(["--config", str(bad), "run", "--headless"]) == 1
    assert called == [True]


_HEAP_WITH_HOLES = r"""
import sys
from trayupdater.memory import release_free_memory
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
blocks = [bytes(60000) for _ in range(2000)]  # 120 MB of malloc'd heap, every page touched
del blocks[:-1]  # all free but the last: it pins the heap's top, so free() cannot trim it
before = rss()
released = release_free_memory()
print(before, rss(), released)
"""


@glibc
def test_release_free_memory_gives_a_heap_full_of_holes_back() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _HEAP_WITH_HOLES],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    before, after, released = result.stdout.split()
    assert int(before) - int(after) > 80, result.stdout
    assert released == "True"


def test_a_quiet_proxy_releases_memory_but_not_while_a_request_is_served(monkeypatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(dispatcher, "QUIET_SECONDS", 0.2)
    monkeypatch.setattr(proxy_server, "release_free_memory", lambda: calls.append(1.0) or True)
    backend = RealBackend("v1")
    proxy = ReverseProxy("127.0.0.1", 0)
    proxy.start()
    try:
        proxy.switch(backend.backend)
        client = http.client.HTTPConnection(*proxy.address, timeout=TIMEOUT)
        # One slow request: served for 1.5 s while the dispatcher sees no event.
        answered = threading.Event()

        def slow() -> None:
            client.request("GET", "/sleep?s=1.5")
            client.getresponse().read()
            answered.set()

        threading.Thread(target=slow, daemon=True).start()
        assert not answered.wait(1.2)
        assert calls == [], "memory released while a request was being served"
        assert answered.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls, "the quiet proxy never released memory"
        time.sleep(1.0)
        assert len(calls) == 1, "released again with nothing new to release"
        client.close()
    finally:
        proxy.close()
        backend.close()
