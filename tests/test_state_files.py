"""A hand-edited or damaged state.json never leaves the app without a serving version.

The real app on a real data folder: 1.0.0 is installed and verified, then its state.json is
damaged the way a hand edit (or another build) could, and the app is started again.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import alive, wait_for
from test_runtime import get, make_config, running

from trayupdater.app import App
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.status import Phase
from trayupdater.store import MAX_TIMESTAMP, State, VersionStore


def installed_data(feed: ReleaseFeed, app_factory: Callable[..., App]) -> Path:
    """A data folder with 1.0.0 installed and out of probation; the app stopped."""
    publish_version(feed, "1.0.0")
    app = app_factory()
    wait_for(running(app, "1.0.0"), what="1.0.0 running")
    wait_for(lambda: app.store.load_state().probation_until is None, what="probation over")
    app.stop()
    return app.config.data_dir


def damage(data: Path, **fields: object) -> None:
    path = data / "state.json"
    state = json.loads(path.read_text())
    state.update(fields)
    path.write_text(json.dumps(state))


def saved(data: Path) -> dict[str, Any]:
    """state.json as written (not through the checks of loading it)."""
    return json.loads((data / "state.json").read_text())


def restarted(feed: ReleaseFeed, data: Path, **changes: object) -> App:
    app = App(make_config(feed, data, **changes), check_on_start=False)
    app.start()
    return app


def children_of(data: Path) -> list[int]:
    """Processes (not zombies) whose command line mentions ``data``: our children."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(data).encode() in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    "fields",
    [
        {"active": "../../etc", "previous": 5, "child_pid": 1.5, "child_port": True},
        {"active": 5, "etag": 5, "last_check": "x", "skipped": 1},
        {"probation_until": "soon", "child_pid": "123"},
    ],
    ids=["unsafe-names", "numbers-for-strings", "strings-for-numbers"],
)
def test_a_damaged_state_file_still_serves_the_installed_version(
    feed: ReleaseFeed, app_factory: Callable[..., App], fields: dict[str, object]
) -> None:
    data = installed_data(feed, app_factory)
    damage(data, **fields)
    app = restarted(feed, data)
    try:
        wait_for(running(app, "1.0.0"), 20, what="1.0.0 serving again")
        assert get(app)[:2] == (200, "1.0.0")
    finally:
        app.stop()
    # What was saved back is clean: the next start needs no repair.
    written = saved(data)
    assert State.from_json(written) == VersionStore(data).load_state()
    assert written["active"] == "1.0.0" and "1.0.0" not in written["blocked"]


@pytest.mark.skipif(sys.platform != "linux", reason="finds the child through /proc")
def test_a_failure_after_the_child_started_at_boot_stops_it(
    feed: ReleaseFeed,
    app_factory: Callable[..., App],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Boot fails past starting the child (a bug: a value no check stopped): the child is
    stopped with it, never left running unsupervised and holding its port."""
    data = installed_data(feed, app_factory)
    real = VersionStore.load_state

    def unchecked(self: VersionStore) -> State:
        state = real(self)
        state.probation_until = "soon"  # type: ignore[assignment]
        return state

    monkeypatch.setattr(VersionStore, "load_state", unchecked)
    app = restarted(feed, data)
    try:
        wait_for(lambda: app.updater.status().phase is Phase.ERROR, 20, what="boot failed")
        assert "Internal error" in (app.updater.status().error or "")
        wait_for(lambda: not children_of(data), 10, what="the started child stopped")
    finally:
        app.stop()
    assert not children_of(data)


def test_a_boot_that_fails_before_a_child_starts_answers_503_at_once(
    feed: ReleaseFeed,
    app_factory: Callable[..., App],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proxy holds requests from the moment it listens until boot says what serves. A
    boot that fails before any child starts (a bug) must end that hold: requests waited
    hold_seconds for a child that was never coming."""
    data = installed_data(feed, app_factory)

    def broken(self: VersionStore) -> State:
        raise RuntimeError("a bug in reading the state")

    monkeypatch.setattr(VersionStore, "load_state", broken)
    app = restarted(feed, data, hold_seconds=120.0)
    try:
        wait_for(
            lambda: "Internal error" in (app.updater.status().error or ""), 20, what="boot failed"
        )
        conn = http.client.HTTPConnection("127.0.0.1", app.proxy.address[1], timeout=30)
        conn.request("GET", "/version")
        assert conn.getresponse().status == 503  # at once, not after 120 s
        conn.close()
    finally:
        app.stop()


def test_probation_carried_over_a_restart_lasts_no_longer_than_configured(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    """A probation deadline far ahead (clock set back, hand edit) ends after at most
    ``probation_seconds``: the worker neither waits for it forever nor fails to wait."""
    data = installed_data(feed, app_factory)
    damage(data, probation_until=MAX_TIMESTAMP)
    app = restarted(feed, data, probation_seconds=1.0)
    try:
        wait_for(running(app, "1.0.0"), 20, what="1.0.0 serving again")
        wait_for(lambda: saved(data)["probation_until"] is None, 10, what="probation over")
        assert get(app)[:2] == (200, "1.0.0")
        assert app.updater.status().error is None
    finally:
        app.stop()
