"""Skip / allow / pause: the rules (preferences.py) and the real app driven by its CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support import Instance, wait_for

from trayupdater import preferences
from trayupdater.children import free_port
from trayupdater.demo import publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.status import Command
from trayupdater.store import State, VersionStore


def test_skip_holds_back_one_version_only():
    state = State(active="1.0.0")
    preferences.apply(state, Command.SKIP, "1.1.0")
    assert preferences.hold_reason(state, "1.1.0") == "1.1.0 is available; skipped as you asked"
    assert preferences.hold_reason(state, "1.2.0") is None  # a newer one installs as usual
    with pytest.raises(preferences.PreferenceError, match="running version"):
        preferences.apply(state, Command.SKIP, "1.0.0")


def test_allow_unblocks_and_unskips():
    state = State(active="1.0.0", blocked=["1.1.0", "1.2.0"], skipped="1.3.0")
    assert preferences.apply(state, Command.ALLOW, "1.1.0") == "1.1.0 is allowed again"
    assert state.blocked == ["1.2.0"]
    preferences.apply(state, Command.ALLOW, "v1.3.0")
    assert state.skipped is None


def test_a_timed_pause_ends_by_itself():
    now = [1000.0]
    state = State()
    preferences.apply(state, Command.PAUSE, 3600.0, now=lambda: now[0])
    assert "paused until" in (preferences.hold_reason(state, "2.0", now=lambda: now[0]) or "")
    now[0] += 3601
    assert preferences.hold_reason(state, "2.0", now=lambda: now[0]) is None
    assert state.paused is False and state.paused_until is None


@pytest.mark.parametrize(
    "payload", ["1h", -5, 0, float("inf"), float("nan"), True, 10**12, "../../etc"]
)
def test_hostile_pause_and_version_payloads_are_refused(payload):
    with pytest.raises(preferences.PreferenceError):
        preferences.check_pause(payload)
    if not isinstance(payload, str) or "/" in payload:
        with pytest.raises(preferences.PreferenceError):
            preferences.check_version(payload)


def test_durations():
    assert preferences.parse_duration("90") == 90
    assert preferences.parse_duration("30m") == 1800
    assert preferences.parse_duration("1h") == 3600
    with pytest.raises(preferences.PreferenceError):
        preferences.parse_duration("soon")


def test_an_old_state_file_loads_with_defaults(tmp_path: Path):
    store = VersionStore(tmp_path)
    store.state_path.write_text(json.dumps({"active": "1.0.0", "blocked": ["0.9.0"]}))
    state = store.load_state()
    assert state.skipped is None and state.paused is False and state.paused_until is None
    store.state_path.write_text(json.dumps({"skipped": 5, "paused": "yes", "paused_until": "x"}))
    state = store.load_state()  # hand-edited nonsense is "not set"
    assert state.skipped is None and state.paused is False and state.paused_until is None


def test_the_running_app_skips_pauses_and_allows(feed: ReleaseFeed, tmp_path: Path):
    inst = Instance(feed, tmp_path / "data", free_port())
    publish_version(feed, "1.0.0")
    inst.start()
    try:
        wait_for(lambda: inst.version() == "1.0.0", what="1.0.0 served")
        # An explicit data folder keeps its logs, the app's and the child's, with it.
        assert (inst.data / "logs" / "trayupdater.log").is_file()
        assert (inst.data / "logs" / "child-1.0.0.log").is_file()
        publish_version(feed, "1.1.0", notes="## Changes\n* Faster")
        assert inst.cli("pause").returncode == 0
        out = inst.cli("check")
        assert "1.1.0 is available; updates are paused until resumed" in out.stdout, out
        assert inst.version() == "1.0.0"
        status = json.loads(inst.cli("status", "--json").stdout)
        assert status["paused"] is True and status["paused_until"] is None
        # Release information from the check: the page and the notes' first line.
        assert status["release_notes"] == "Faster"
        assert status["release_url"] == f"{feed.url}/demo/simple-server/releases/tag/v1.1.0"
        assert status["latest"] == "1.1.0"
        assert "updates paused until resumed" in inst.cli("status").stdout

        assert inst.cli("skip").returncode == 0  # the latest available: 1.1.0
        assert inst.cli("unpause").returncode == 0
        out = inst.cli("check")
        assert "skipped as you asked" in out.stdout and inst.version() == "1.0.0"
        assert "skipped version: 1.1.0" in inst.cli("status").stdout
        state = VersionStore(inst.data).load_state()
        assert state.skipped == "1.1.0" and state.paused is False  # persisted

        assert inst.cli("allow", "1.1.0").returncode == 0  # ... and a check follows at once
        wait_for(lambda: inst.version() == "1.1.0", what="1.1.0 installed after allow")
        bad = inst.cli("pause", "--for", "forever")
        assert bad.returncode == 1 and "cannot read 'forever' as a duration" in bad.stderr
        assert inst.cli("pause", "--for", "1h").returncode == 0
        until = json.loads(inst.cli("status", "--json").stdout)["paused_until"]
        assert 3500 < until - time.time() <= 3600
    finally:
        inst.kill()
