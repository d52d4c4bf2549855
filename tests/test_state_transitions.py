"""Every state transition is one atomic save: state.json never names a blocked version as
the active one, whatever moment the app is killed at.

Each save the real app makes is recorded (the save itself still happens) and checked: a
crash between two saves of one transition would leave exactly such a state on disk, and
the next start would run the blocked version again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import wait_for
from test_runtime import make_config, running

from trayupdater.app import App
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.status import Command
from trayupdater.store import State, VersionStore


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[State]]:
    states: list[State] = []
    real = VersionStore.save_state

    def record(self: VersionStore, state: State) -> None:
        states.append(copy.deepcopy(state))
        real(self, state)

    monkeypatch.setattr(VersionStore, "save_state", record)
    yield states


def assert_consistent(states: list[State]) -> None:
    for i, state in enumerate(states):
        assert state.active not in state.blocked, f"save {i} runs a blocked version: {state}"


def test_manual_rollback_saves_blocked_and_active_together(
    feed: ReleaseFeed, app_factory: Callable[..., App], saved: list[State]
) -> None:
    publish_version(feed, "1.0.0")
    app = app_factory()
    wait_for(running(app, "1.0.0"))
    publish_version(feed, "1.1.0")
    assert app.updater.request(Command.CHECK).active == "1.1.0"
    del saved[:]
    status = app.updater.request(Command.ROLLBACK)
    assert status.active == "1.0.0" and "1.1.0" in status.blocked
    assert_consistent(saved)
    assert [s.active for s in saved if "1.1.0" in s.blocked][:1] == ["1.0.0"]


def test_automatic_rollback_in_probation_saves_once(
    feed: ReleaseFeed, app_factory: Callable[..., App], saved: list[State]
) -> None:
    publish_version(feed, "1.0.0")
    app = app_factory(probation_seconds=30)
    wait_for(running(app, "1.0.0"))
    publish_version(feed, "1.1.0", behaviour={"CRASH_AFTER_SECONDS": 1.5})
    assert app.updater.request(Command.CHECK).active == "1.1.0"
    wait_for(lambda: "1.1.0" in app.updater.status().blocked, what="automatic rollback")
    assert app.updater.status().active == "1.0.0"
    assert_consistent(saved)


def test_boot_fallback_blocks_and_switches_in_one_save(
    feed: ReleaseFeed, app_factory: Callable[..., App], saved: list[State], tmp_path: Path
) -> None:
    publish_version(feed, "1.0.0")
    app = app_factory()
    wait_for(running(app, "1.0.0"))
    publish_version(feed, "1.1.0")
    assert app.updater.request(Command.CHECK).active == "1.1.0"
    wait_for(lambda: app.store.load_state().probation_until is None, what="probation over")
    app.stop()
    del saved[:]
    # 1.1.0 no longer passes its health check (a damaged install would be installed again).
    config = make_config(feed, tmp_path / "data", health_expect="1.0.0", health_timeout=4)
    again = App(config, check_on_start=False)
    again.start()
    try:
        wait_for(running(again, "1.0.0"), what="fallback to 1.0.0")
        assert "1.1.0" in again.updater.status().blocked
    finally:
        again.stop()
    assert_consistent(saved)
