"""A server that drips: downloads end by rule, and rollback / quit / SIGTERM cut in at once.

Before, a server sending one byte every ten seconds kept the app "downloading" for ever,
and rollback, check and SIGTERM queued behind it (SIGTERM took 30 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpfiles import FileServer
from support import Instance, wait_for
from test_runtime import get, make_config, running

from trayupdater.app import App
from trayupdater.children import free_port
from trayupdater.demo import DEMO_REPO, child_archive, publish_version
from trayupdater.download import Pace, download, part_path
from trayupdater.errors import DownloadError
from trayupdater.feed import ReleaseFeed
from trayupdater.http_client import HttpClient
from trayupdater.status import Command, Phase

PAYLOAD = os.urandom(200_000)


@pytest.fixture
def dripping() -> Iterator[FileServer]:
    with FileServer({"/asset": PAYLOAD}) as server:
        yield server


def test_a_trickle_below_the_minimum_rate_is_cut_and_kept_for_resume(
    dripping: FileServer, tmp_path: Path
) -> None:
    dripping.faults.drip = (1, 0.2)  # 5 bytes/s
    dest = tmp_path / "asset"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"too slow \(\d+ bytes in the last 1 s"):
        download(
            HttpClient(),
            dripping.url("/asset"),
            dest,
            max_bytes=10**6,
            pace=Pace(timeout=10, min_rate=1000, rate_window=1.0),
        )
    took = time.monotonic() - started
    assert took < 5, f"cut only after {took:.1f} s"
    assert part_path(dest, dripping.url("/asset")).exists()  # kept: a later check resumes


def test_a_download_past_its_deadline_is_cut_even_at_a_fair_rate(
    dripping: FileServer, tmp_path: Path
) -> None:
    dripping.faults.drip = (2000, 0.05)  # 40 kB/s: fine for the rate rule, too long in all
    started = time.monotonic()
    with pytest.raises(DownloadError, match="not finished after 1 s"):
        download(
            HttpClient(),
            dripping.url("/asset"),
            tmp_path / "asset",
            max_bytes=10**6,
            pace=Pace(timeout=10, deadline=1.0, min_rate=1000, rate_window=0.5),
        )
    assert time.monotonic() - started < 5


def test_a_fair_download_is_left_alone(dripping: FileServer, tmp_path: Path) -> None:
    dripping.faults.drip = (50_000, 0.05)
    result = download(
        HttpClient(),
        dripping.url("/asset"),
        tmp_path / "asset",
        max_bytes=10**6,
        pace=Pace(timeout=10, deadline=30, min_rate=1000, rate_window=0.1),
    )
    assert result.size == len(PAYLOAD)


@pytest.fixture
def stuck_app(feed: ReleaseFeed, tmp_path: Path) -> Iterator[App]:
    """An app serving 1.0.0 whose download of 1.1.0 crawls (64 KiB every 10 s: above the
    minimum rate, so only a command can stop it)."""
    publish_version(feed, "1.0.0")
    app = App(make_config(feed, tmp_path / "data"))
    app.start()
    wait_for(running(app, "1.0.0"), what="1.0.0 serving")
    name, blob = child_archive("1.1.0")
    feed.publish(DEMO_REPO, "v1.1.0", {name: blob + os.urandom(300_000)}, digests=False)
    feed.download_delay = 10.0
    app.updater.send(Command.CHECK)
    wait_for(lambda: app.updater.status().phase is Phase.DOWNLOADING, what="downloading")
    time.sleep(0.3)  # well inside the first 10 s pause
    yield app
    feed.download_delay = 0
    app.stop()


def test_rollback_cuts_into_a_running_download(stuck_app: App) -> None:
    started = time.monotonic()
    status = stuck_app.updater.request(Command.ROLLBACK, timeout=60)
    took = time.monotonic() - started
    print(f"rollback answered {took * 1000:.0f} ms after it was asked, mid-download")
    assert took < 3
    assert status.phase is Phase.RUNNING and status.active == "1.0.0"
    assert get(stuck_app)[:2] == (200, "1.0.0")
    # The download was stopped, not finished behind the rollback's back.
    assert stuck_app.store.installed() == ["1.0.0"]


def test_quit_cuts_into_a_running_download(stuck_app: App) -> None:
    started = time.monotonic()
    done = threading.Event()
    threading.Thread(target=lambda: (stuck_app.stop(), done.set()), daemon=True).start()
    assert done.wait(30)
    took = time.monotonic() - started
    print(f"quit took {took * 1000:.0f} ms mid-download")
    assert took < 5


def test_sigterm_stops_the_headless_app_mid_download(feed: ReleaseFeed, tmp_path: Path) -> None:
    instance = Instance(feed, tmp_path / "data", free_port())
    try:
        publish_version(feed, "1.0.0")
        proc = instance.start()
        wait_for(lambda: instance.version() == "1.0.0", what="serving 1.0.0")
        name, blob = child_archive("1.1.0")
        feed.publish(DEMO_REPO, "v1.1.0", {name: blob + os.urandom(300_000)}, digests=False)
        feed.download_delay = 10.0
        trigger = subprocess.Popen(
            [sys.executable, "-m", "trayupdater", *instance.args, "check"],
            env=instance.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        downloads = instance.data / "downloads"
        wait_for(lambda: any(downloads.glob(f"{name}.*.part")), what="the download under way")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        took = time.monotonic() - started
        print(f"SIGTERM mid-download: exited after {took * 1000:.0f} ms")
        assert took < 5
        trigger.kill()
        trigger.wait()
    finally:
        feed.download_delay = 0
        instance.kill()
