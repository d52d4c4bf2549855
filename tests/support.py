"""Helpers shared by the end-to-end tests and the benchmarks: waiting, load, a headless app."""

from __future__ import annotations

import http.client
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from trayupdater.demo import DEMO_REPO, asset_name
from trayupdater.feed import ReleaseFeed
from trayupdater.platforms import Platform
from trayupdater.store import VersionStore


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")


def alive(pid: int | None) -> bool:
    """Is ``pid`` a running process (not a zombie waiting to be reaped)?"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return sys.platform != "linux"


def recorded_child_pid(data_dir: Path, timeout: float = 30.0) -> int:
    """The pid of the serving child once state.json records it.

    The proxy switches to a new child a moment before the state is saved, so "serving
    1.0.0" does not yet mean state.json names its pid: wait for it.
    """
    store = VersionStore(data_dir)
    wait_for(lambda: alive(store.load_state().child_pid), timeout, what="child pid in state.json")
    pid = store.load_state().child_pid
    assert pid
    return pid


def second_loopback_host() -> str:
    """127.0.0.2: another origin on this machine (skips the test where it cannot be bound)."""
    import socket

    import pytest

    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not usable on this machine")
    return "127.0.0.2"


def served_version(port: int, host: str = "127.0.0.1") -> str | None:
    """What GET /version answers through the proxy on ``port``; None if it does not."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        conn.request("GET", "/version")
        response = conn.getresponse()
        body = response.read().decode()
        conn.close()
        return body if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None


class Load:
    """Keep-alive clients sending GET /version in a loop; every failure is recorded, with
    when it was asked and answered (``failure_times``). ``pause``: seconds each client
    waits between requests (0: as fast as it can)."""

    def __init__(
        self,
        address: tuple[str, int],
        clients: int = 4,
        *,
        timeout: float = 10,
        pause: float = 0,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.pause = pause
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.failure_times: list[tuple[float, float]] = []  # (asked, answered) per failure
        self.seen: dict[str, int] = {}  # version -> answers
        self.first_seen: dict[str, float] = {}  # version -> time.monotonic() of first answer
        self.slowest = 0.0  # seconds: the longest a request took (a held one, say)
        self.timeline: list[tuple[float, str]] = []  # (answered at, version), in order
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    @property
    def count(self) -> int:
        return sum(self.seen.values()) + len(self.failures)

    def first_after(self, since: float, version: str) -> float | None:
        """When ``version`` first answered after ``since`` (time.monotonic()), if it did."""
        with self._lock:
            return next((t for t, v in self.timeline if t >= since and v == version), None)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.timeout)

    def _run(self) -> None:
        conn = http.client.HTTPConnection(*self.address, timeout=self.timeout)
        while not self.stop.is_set():
            asked = time.monotonic()
            try:
                conn.request("GET", "/version")
                response = conn.getresponse()
                body = response.read().decode()
                ok = response.status == 200
                if not ok:
                    body = f"HTTP {response.status}: {body[:80]}"
            except (OSError, http.client.HTTPException) as exc:
                ok, body = False, repr(exc)
                conn.close()
                conn = http.client.HTTPConnection(*self.address, timeout=self.timeout)
            now = time.monotonic()
            with self._lock:
                self.slowest = max(self.slowest, now - asked)
                if ok:
                    self.seen[body] = self.seen.get(body, 0) + 1
                    self.first_seen.setdefault(body, now)
                    self.timeline.append((now, body))
                else:
                    self.failures.append(body)
                    self.failure_times.append((asked, now))
            if self.pause:
                time.sleep(self.pause)
        conn.close()


class Instance:
    """``trayupdater run --headless`` as a real process against a local feed (or, made with
    :meth:`tuf`, against a TUF repository on a static server)."""

    def __init__(
        self,
        feed: ReleaseFeed | None,
        data: Path,
        port: int,
        *,
        source: Sequence[str] | None = None,
        **env: str,
    ) -> None:
        self.data = data
        self.port = port
        data.parent.mkdir(parents=True, exist_ok=True)
        config = data.parent / "none.toml"
        config.write_text("")
        if source is None:
            assert feed is not None, "a feed, or source arguments"
            source = ["--api-url", feed.url]
        self.args = [
            *source,
            "--repo",
            DEMO_REPO,
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--config",
            str(config),
        ]
        self.env = {
            **os.environ,
            "TRAYUPDATER_PROBATION_SECONDS": "1",
            "TRAYUPDATER_MIN_READY_SECONDS": "0.3",
            "TRAYUPDATER_CHECK_INTERVAL": "3600",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def tuf(cls, url: str, trusted_root: Path, data: Path, port: int, **env: str) -> Instance:
        """An instance whose source is the TUF repository at ``url``."""
        source = ["--set", "kind=tuf", "--set", f"url={url}"]
        source += ["--set", f"trusted_root={trusted_root}"]
        return cls(None, data, port, source=source, **env)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trayupdater", *self.args, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def start(self) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trayupdater", *self.args, "run", "--headless"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )
        return self.proc

    def version(self) -> str | None:
        return served_version(self.port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def publish_script(feed: ReleaseFeed, version: str, source: str) -> None:
    """Publish ``version`` of the child as a Python script (``source``), packaged like a
    release of it for this platform: a child that misbehaves as no demo knob can."""
    script = f"#!{sys.executable}\n{source}".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("simple-server")
        info.size, info.mode, info.mtime = len(script), 0o755, int(time.time())
        archive.addfile(info, io.BytesIO(script))
    feed.publish(DEMO_REPO, f"v{version}", {asset_name(Platform.current()): buffer.getvalue()})
