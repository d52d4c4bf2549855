"""A check that fell due while the computer slept runs soon after it wakes.

``time.monotonic()``, and every wait with a timeout, stops while the computer sleeps: a
laptop closed overnight checked an hour *of use* after its last check. A machine cannot be
put to sleep here, so the clock checks are scheduled on is replaced by one the test moves
on, as sleep would; everything else is real (the app, its feed, its child).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for
from test_runtime import make_config, running

import trayupdater.updater
from trayupdater.app import App
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.schedule import _clock_with_sleep, since_boot


class SleepingClock:
    """since_boot() plus the time the test says the computer slept."""

    def __init__(self) -> None:
        self.slept = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return since_boot() + self.slept

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SleepingClock:
    fake = SleepingClock()
    monkeypatch.setattr(trayupdater.updater, "since_boot", fake)
    monkeypatch.setattr(trayupdater.updater, "MAX_NAP", 0.2)  # the product wakes every 60 s
    return fake


@pytest.fixture
def app(feed: ReleaseFeed, tmp_path: Path, clock: SleepingClock) -> Iterator[App]:
    publish_version(feed, "1.0.0")
    application = App(make_config(feed, tmp_path / "data", check_interval=3600))
    application.start()
    wait_for(running(application, "1.0.0"), what="1.0.0 running")
    yield application
    application.stop()


def test_a_check_due_during_sleep_runs_soon_after_waking(
    app: App, feed: ReleaseFeed, clock: SleepingClock
) -> None:
    publish_version(feed, "1.1.0")
    time.sleep(1)
    assert app.updater.status().active == "1.0.0"  # not due: the interval is an hour
    clock.sleep(2 * 3600)  # the lid was closed past the hour (its jitter is ±10 %)
    wait_for(running(app, "1.1.0"), timeout=20, what="the check due during the night")


def test_without_sleep_the_interval_is_kept(app: App, feed: ReleaseFeed) -> None:
    """The short naps (MAX_NAP) wake the worker; they must not make it check."""
    publish_version(feed, "1.1.0")
    time.sleep(2)  # ten naps
    assert app.updater.status().active == "1.0.0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's clock")
def test_the_clock_counts_sleep_on_linux_and_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    # Linux: CLOCK_BOOTTIME (CLOCK_MONOTONIC stops during suspend); macOS: clock_gettime's
    # CLOCK_MONOTONIC, which counts sleep there. Both can be read on Linux.
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert abs(since_boot() - boot) < 1
    monkeypatch.setattr(sys, "platform", "darwin")
    mac = _clock_with_sleep()
    assert abs(mac() - time.clock_gettime(time.CLOCK_MONOTONIC)) < 1
