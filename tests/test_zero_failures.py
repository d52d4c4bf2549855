"""A version can die at any moment and no client sees an error.

Keep-alive load from several clients through the real proxy of the real app, real child
processes that misbehave on purpose (demo_server knobs), real signals. Every scenario
asserts **0 failed requests**: a bad version never takes traffic (soak), one that dies on
probation hands over to the warm previous child, a child killed outside probation has
its requests held until it is back, and a crash loop rolls back.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Load, wait_for
from test_runtime import get, make_config, running

from trayupdater.app import App
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.status import Command, Phase

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


@pytest.fixture
def start(feed: ReleaseFeed, tmp_path: Path) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def make(**changes: object) -> App:
        publish_version(feed, "1.0.0")
        app = App(make_config(feed, tmp_path / "data", **changes))
        app.start()
        apps.append(app)
        wait_for(running(app, "1.0.0"), what="1.0.0 serving")
        return app

    yield make
    for app in apps:
        app.stop()


def child_pid(app: App) -> int:
    pid = app.store.load_state().child_pid
    assert pid
    return pid


def test_crash_during_the_soak_never_takes_traffic(
    feed: ReleaseFeed, start: Callable[..., App]
) -> None:
    app = start(min_ready_seconds=3.0)
    publish_version(feed, "1.1.0", behaviour={"CRASH_AFTER_SECONDS": 1.0})
    with Load(app.proxy.address) as load:
        status = app.updater.request(Command.CHECK)
        time.sleep(0.3)
    assert status.active == "1.0.0" and "1.1.0" in status.blocked
    assert "readiness check" in (status.error or "")
    assert load.failures == [] and set(load.seen) == {"1.0.0"}


@pytest.mark.parametrize(
    ("behaviour", "timeout"),
    [({"CRASH_AT_START": True}, 30), ({"WRONG_VERSION": "9.9.9"}, 4)],
    ids=["crash-at-start", "wrong-version"],
)
def test_a_version_that_never_becomes_healthy_never_takes_traffic(
    feed: ReleaseFeed, start: Callable[..., App], behaviour: dict, timeout: float
) -> None:
    app = start(health_timeout=timeout)
    publish_version(feed, "1.1.0", behaviour=behaviour)
    with Load(app.proxy.address) as load:
        status = app.updater.request(Command.CHECK)
    assert status.active == "1.0.0" and "1.1.0" in status.blocked
    assert load.failures == [] and set(load.seen) == {"1.0.0"}


def test_crash_during_probation_hands_over_to_the_warm_previous_child(
    feed: ReleaseFeed, start: Callable[..., App]
) -> None:
    app = start(probation_seconds=30, min_ready_seconds=0.5)
    old_pid = child_pid(app)
    publish_version(feed, "1.1.0", behaviour={"CRASH_AFTER_SECONDS": 2.0})
    with Load(app.proxy.address, clients=6) as load:
        assert app.updater.request(Command.CHECK).active == "1.1.0"
        wait_for(lambda: "1.1.0" in app.updater.status().blocked, what="1.1.0 blocked")
        time.sleep(0.5)
    status = app.updater.status()
    assert status.active == "1.0.0" and status.phase is Phase.RUNNING
    assert status.message.startswith("Automatically rolled back to 1.0.0")
    assert load.failures == [], load.failures[:5]
    assert load.seen.get("1.1.0", 0) > 0 and load.seen.get("1.0.0", 0) > 0
    # Served by the child that was kept warm, not a new start.
    assert child_pid(app) == old_pid


def test_sigkill_of_the_active_child_holds_requests_until_it_is_back(
    start: Callable[..., App],
) -> None:
    app = start()
    pid = child_pid(app)
    with Load(app.proxy.address, clients=6) as load:
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: app.store.load_state().child_pid not in (None, pid), what="restarted")
        wait_for(running(app, "1.0.0"))
        time.sleep(0.3)
    assert load.failures == [], load.failures[:5]
    assert get(app)[:2] == (200, "1.0.0")


def test_sigkill_again_during_the_back_off_still_fails_nothing(
    start: Callable[..., App],
) -> None:
    app = start()
    with Load(app.proxy.address, clients=6) as load:
        for _ in range(3):  # each restart is killed again: back-off 0.5 s, 1 s, 2 s
            pid = child_pid(app)
            os.kill(pid, signal.SIGKILL)
            wait_for(
                lambda pid=pid: app.store.load_state().child_pid not in (None, pid),
                what="restarted",
            )
        wait_for(running(app, "1.0.0"))
        time.sleep(0.3)
    assert load.failures == [], load.failures[:5]


def test_a_crash_loop_after_probation_rolls_back_and_blocks(
    feed: ReleaseFeed, start: Callable[..., App]
) -> None:
    app = start(probation_seconds=0.5, min_ready_seconds=0.3, crash_loop_exits=3)
    publish_version(feed, "1.1.0", behaviour={"CRASH_AFTER_SECONDS": 1.5})
    with Load(app.proxy.address, clients=4) as load:
        assert app.updater.request(Command.CHECK).active == "1.1.0"
        wait_for(lambda: "1.1.0" in app.updater.status().blocked, timeout=60, what="rollback")
        time.sleep(0.3)
    status = app.updater.status()
    assert status.active == "1.0.0"
    assert "crashed 3 times" in status.message
    assert load.failures == [], load.failures[:5]
