"""memory.py: one malloc arena for the app's threads (glibc), set by `trayupdater run`.

Checked on a real process: threads allocating at the same moment, then glibc's own
``malloc_stats()`` report of its arenas (one "Arena N:" line each, on stderr).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from trayupdater import cli, memory

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
