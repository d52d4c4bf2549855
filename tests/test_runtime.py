"""The running app end to end: real feed, real child processes, the real proxy on a real port."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from support import Load, wait_for

import trayupdater.children
from trayupdater.app import App
from trayupdater.config import Config
from trayupdater.demo import DEMO_REPO, publish_version
from trayupdater.feed import ReleaseFeed
from trayupdater.status import Command, Phase, Status


def make_config(feed: ReleaseFeed, data: Path, **changes: object) -> Config:
    base = Config(
        repo=DEMO_REPO,
        api_url=feed.url,
        port=0,
        data_dir=data,
        check_interval=3600,
        probation_seconds=1.0,
        min_ready_seconds=0.3,  # the readiness soak has tests of its own
        health_timeout=15,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def get(app: App, path: str = "/version") -> tuple[int, str, dict[str, str]]:
    host, port = app.proxy.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body, dict(response.getheaders())


def running(app: App, version: str) -> Callable[[], bool]:
    def check() -> bool:
        status = app.updater.status()
        return status.phase is Phase.RUNNING and status.active == version

    return check


def test_first_start_installs_and_serves(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    publish_version(feed, "1.0.0")
    app = app_factory()
    wait_for(running(app, "1.0.0"), what="1.0.0 running")
    assert get(app)[:2] == (200, "1.0.0")


def test_update_and_rollback_under_load_drop_nothing(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    publish_version(feed, "1.0.0")
    app = app_factory()
    wait_for(running(app, "1.0.0"))
    with Load(app.proxy.address) as load:
        time.sleep(0.3)
        publish_version(feed, "1.1.0")
        status = app.updater.request(Command.CHECK)
        assert status.active == "1.1.0", status
        assert status.message == "Updated to 1.1.0"
        assert status.previous == "1.0.0"
        time.sleep(1.5)  # past probation
        status = app.updater.request(Command.ROLLBACK)
        assert status.active == "1.0.0" and "1.1.0" in status.blocked
        status = app.updater.request(Command.CHECK)
        assert status.active == "1.0.0"  # the rolled-back version is not re-installed
        publish_version(feed, "1.2.0")
        status = app.updater.request(Command.CHECK)
        assert status.active == "1.2.0"  # a newer release lifts the block
        time.sleep(0.3)
    assert load.failures == []
    assert set(load.seen) == {"1.0.0", "1.1.0", "1.2.0"}
    assert load.count > 100


def test_crashing_new_version_is_rolled_back_and_blocked(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    publish_version(feed, "1.0.0")
    app = app_factory(probation_seconds=6.0)
    wait_for(running(app, "1.0.0"))
    publish_version(feed, "1.1.0", behaviour={"CRASH_AFTER_SECONDS": 1.0})
    assert app.updater.request(Command.CHECK).active == "1.1.0"
    wait_for(running(app, "1.0.0"), what="automatic rollback")
    status = app.updater.status()
    assert "1.1.0" in status.blocked
    assert status.message.startswith("Automatically rolled back to 1.0.0")
    assert get(app)[:2] == (200, "1.0.0")
    assert app.updater.request(Command.CHECK).active == "1.0.0"


@pytest.mark.parametrize(
    ("behaviour", "fragment", "timeout"),
    [
        # A crash is seen at once, so a long timeout costs nothing and absorbs a slow CI box.
        ({"CRASH_AT_START": True}, "exit", 30),
        # A wrong answer is only known when the timeout ends: long enough to get an answer.
        ({"WRONG_VERSION": "9.9.9"}, "9.9.9", 6),
    ],
)
def test_bad_new_version_never_takes_traffic(
    feed: ReleaseFeed,
    app_factory: Callable[..., App],
    behaviour: dict[str, object],
    fragment: str,
    timeout: float,
) -> None:
    publish_version(feed, "1.0.0")
    app = app_factory(health_timeout=timeout)
    wait_for(running(app, "1.0.0"))
    publish_version(feed, "1.1.0", behaviour=behaviour)
    with Load(app.proxy.address, clients=2) as load:
        status = app.updater.request(Command.CHECK)
    assert status.active == "1.0.0" and status.phase is Phase.RUNNING
    assert status.error and fragment in status.error and "1.1.0" in status.error
    assert "1.1.0" in status.blocked
    assert load.failures == [] and set(load.seen) == {"1.0.0"}


def test_killed_child_is_restarted_and_proxy_says_503_meanwhile(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    import os
    import signal

    publish_version(feed, "1.0.0")
    app = app_factory()
    wait_for(running(app, "1.0.0"))
    pid = app.store.load_state().child_pid
    assert pid
    statuses: list[Status] = []
    app.updater.subscribe(statuses.append)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: any(s.phase is Phase.RESTARTING for s in statuses), what="restarting")
    code, _, headers = get(app)
    assert code in (200, 503)
    if code == 503:
        assert headers.get("Retry-After")
    wait_for(running(app, "1.0.0"), what="restarted")
    assert get(app)[:2] == (200, "1.0.0")
    assert app.store.load_state().child_pid not in (None, pid)


def test_errors_leave_the_old_version_serving(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    publish_version(feed, "1.0.0")
    app = app_factory()
    wait_for(running(app, "1.0.0"))
    for fault in ("500", "html", "truncated", "ratelimit"):
        feed.inject(fault, "/releases", times=5)
        status = app.updater.request(Command.CHECK)
        assert status.active == "1.0.0" and status.phase is Phase.RUNNING
        assert status.error, fault
        assert get(app)[:2] == (200, "1.0.0")
        app.updater.pipeline.source.blocked_until = 0  # forget the rate limit for the next fault
        feed._faults.clear()


def test_second_instance_is_refused(
    feed: ReleaseFeed, app_factory: Callable[..., App], tmp_path: Path
) -> None:
    from trayupdater.app import AlreadyRunningError

    publish_version(feed, "1.0.0")
    app_factory()
    second = App(make_config(feed, tmp_path / "data"))
    with pytest.raises(AlreadyRunningError):
        second.start()


def _updated_to_1_1_0_and_stopped(feed: ReleaseFeed, config: Config) -> App:
    """An app that ran 1.0.0, updated to 1.1.0 past its probation, and was stopped."""
    publish_version(feed, "1.0.0")
    app = App(config)
    app.start()
    try:
        wait_for(running(app, "1.0.0"))
        publish_version(feed, "1.1.0")
        assert app.updater.request(Command.CHECK).active == "1.1.0"
        time.sleep(1.2)  # past probation
    finally:
        app.stop()
    return app


def test_restart_falls_back_when_the_active_version_no_longer_starts(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    config = make_config(feed, tmp_path / "data")
    _updated_to_1_1_0_and_stopped(feed, config)
    # 1.1.0 no longer passes its health check (its files unchanged, so it is not a damaged
    # install, which would be installed again: see the next tests). It answers at once, with
    # the wrong version: a short health timeout.
    again = App(replace(config, health_expect="1.0.0", health_timeout=4), check_on_start=False)
    again.start()
    try:
        wait_for(running(again, "1.0.0"), what="fallback to 1.0.0")
        status = again.updater.status()
        assert "1.1.0" in status.blocked
        assert get(again)[:2] == (200, "1.0.0")
    finally:
        again.stop()


def test_repeated_crashes_back_off(feed: ReleaseFeed, app_factory: Callable[..., App]) -> None:
    import os
    import re
    import signal

    publish_version(feed, "1.0.0")
    app = app_factory()
    wait_for(running(app, "1.0.0"))
    delays: list[float] = []
    app.updater.subscribe(
        lambda s: delays.extend(
            float(m) for m in re.findall(r"restarting in ([\d.]+) s", s.error or "")
        )
    )
    for _ in range(3):
        pid = app.store.load_state().child_pid
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda pid=pid: app.store.load_state().child_pid not in (None, pid),
            what="restarted with a new pid",
        )
        wait_for(running(app, "1.0.0"))
    assert delays == [0.5, 1.0, 2.0]  # each quick crash waits longer before the restart
    assert get(app)[:2] == (200, "1.0.0")


def test_a_stopped_app_lets_go_of_its_log_file(feed: ReleaseFeed, tmp_path: Path) -> None:
    """Its handler stayed on the root logger: the file stayed open, and every later app in
    the process wrote its lines there too."""
    first = App(make_config(feed, tmp_path / "one"), check_on_start=False)
    first.start()
    first.stop()
    second = App(make_config(feed, tmp_path / "two"), check_on_start=False)
    second.start()
    try:
        logging.getLogger("trayupdater.test").warning("a line of the second app")
    finally:
        second.stop()
    one = (tmp_path / "one").rglob("trayupdater.log")
    two = (tmp_path / "two").rglob("trayupdater.log")
    assert "a line of the second app" in next(two).read_text()
    assert "a line of the second app" not in next(one).read_text()
    paths = [getattr(h, "baseFilename", "") for h in logging.getLogger().handlers]
    assert not any(str(tmp_path) in path for path in paths), paths


def test_a_child_that_loses_its_port_to_another_program_is_started_on_another(
    feed: ReleaseFeed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port is picked free, and another program (an outgoing connection's port, say)
    can take it before the child binds it: the child exits at start, and its release was
    judged broken for it and blocked. The race is made certain here: the first port handed
    out is one a real socket of the test already listens on."""
    taken = socket.create_server(("127.0.0.1", 0))
    handed_out: list[int] = []
    real_free_port = trayupdater.children.free_port

    def racing_free_port(host: str = "127.0.0.1") -> int:
        port = taken.getsockname()[1] if not handed_out else real_free_port(host)
        handed_out.append(port)
        return port

    monkeypatch.setattr(trayupdater.children, "free_port", racing_free_port)
    publish_version(feed, "1.0.0")
    app = App(make_config(feed, tmp_path / "data"))
    app.start()
    try:
        wait_for(running(app, "1.0.0"), what="1.0.0 running on another port")
        assert handed_out[0] == taken.getsockname()[1] and len(handed_out) == 2
        assert get(app)[:2] == (200, "1.0.0")
        assert app.updater.status().blocked == ()
    finally:
        app.stop()
        taken.close()


def _damage(app: App, version: str, how: str) -> None:
    installed = app.store.get(version)
    assert installed is not None
    if how == "changed":
        installed.executable.write_text("#!/bin/sh\necho 'damaged install' >&2\nexit 1\n")
    else:  # an antivirus quarantined it
        installed.executable.unlink()


@pytest.mark.parametrize("how", ["changed", "removed"])
def test_a_damaged_install_is_installed_again_not_blocked(
    feed: ReleaseFeed, tmp_path: Path, how: str
) -> None:
    """Its program changed or gone on disk (an antivirus, a disk error) is no fault of the
    release: it was blocked, and the app stayed on the version before for good."""
    config = make_config(feed, tmp_path / "data")
    app = _updated_to_1_1_0_and_stopped(feed, config)
    _damage(app, "1.1.0", how)
    downloads = feed.stats.downloads

    again = App(config, check_on_start=False)  # the repair asks for the check itself
    again.start()
    try:
        wait_for(running(again, "1.1.0"), what="1.1.0 installed again")
        assert feed.stats.downloads > downloads
        state = again.store.load_state()
        assert state.blocked == [] and state.previous == "1.0.0"
        assert get(again)[:2] == (200, "1.1.0")
        assert again.store.damage("1.1.0") is None
    finally:
        again.stop()


def test_a_running_version_damaged_on_disk_is_installed_again(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    """Its child dies and cannot start again, its program gone: the version before serves
    meanwhile (not blocked), and the check that follows installs it again."""
    publish_version(feed, "1.0.0")
    app = app_factory()
    wait_for(running(app, "1.0.0"))
    publish_version(feed, "1.1.0")
    assert app.updater.request(Command.CHECK).active == "1.1.0"
    time.sleep(1.2)  # past probation
    statuses: list[Status] = []
    app.updater.subscribe(statuses.append)
    _damage(app, "1.1.0", "removed")
    pid = app.store.load_state().child_pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: any(s.active == "1.0.0" for s in statuses), what="1.0.0 serving meanwhile")
    wait_for(running(app, "1.1.0"), what="1.1.0 installed again")
    assert app.store.load_state().blocked == []
    assert get(app)[:2] == (200, "1.1.0")


def test_the_only_version_damaged_on_disk_is_installed_again(
    feed: ReleaseFeed, tmp_path: Path
) -> None:
    """Nothing to fall back to: 503 until the check has installed it again, as a first
    install (it is not its own version to roll back to)."""
    publish_version(feed, "1.0.0")
    config = make_config(feed, tmp_path / "data")
    app = App(config)
    app.start()
    try:
        wait_for(running(app, "1.0.0"))
    finally:
        app.stop()
    _damage(app, "1.0.0", "changed")
    again = App(config, check_on_start=False)
    again.start()
    try:
        wait_for(running(again, "1.0.0"), what="1.0.0 installed again")
        state = again.store.load_state()
        assert state.blocked == [] and state.previous is None
        assert again.updater.status().previous is None
    finally:
        again.stop()


def test_the_only_running_version_damaged_on_disk_is_installed_again(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    publish_version(feed, "1.0.0")
    app = app_factory()
    wait_for(running(app, "1.0.0"))
    time.sleep(1.2)  # past probation: a restart, not a failed probation
    statuses: list[Status] = []
    app.updater.subscribe(statuses.append)
    _damage(app, "1.0.0", "removed")
    pid = app.store.load_state().child_pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: any("damaged" in (s.error or "") for s in statuses), what="seen damaged")
    wait_for(running(app, "1.0.0"), what="1.0.0 installed again")
    state = app.store.load_state()
    assert state.blocked == [] and state.previous is None
    assert state.child_pid not in (None, pid) and get(app)[:2] == (200, "1.0.0")


def test_a_probation_that_ended_while_the_app_was_stopped_prunes_at_the_next_start(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    """Quit during 1.2.0's probation, started again after its deadline: the versions
    beyond keep_versions go then, not only after the next update's probation."""
    publish_version(feed, "1.0.0")
    app = app_factory(keep_versions=2, probation_seconds=1.0)
    wait_for(running(app, "1.0.0"))
    publish_version(feed, "1.1.0")
    assert app.updater.request(Command.CHECK).active == "1.1.0"
    wait_for(lambda: app.store.load_state().probation_until is None, what="probation over")
    app.stop()
    app = app_factory(keep_versions=2, probation_seconds=600.0)
    publish_version(feed, "1.2.0")
    assert app.updater.request(Command.CHECK).active == "1.2.0"
    assert app.store.installed() == ["1.0.0", "1.1.0", "1.2.0"]  # on probation: all kept
    app.stop()
    state_path = app.config.data_dir / "state.json"
    state = json.loads(state_path.read_text())
    assert state["probation_until"] > time.time()
    state["probation_until"] = time.time() - 1  # what the clock says after a while away
    state_path.write_text(json.dumps(state))

    app = app_factory(keep_versions=2, probation_seconds=600.0)
    wait_for(running(app, "1.2.0"))
    assert app.store.installed() == ["1.1.0", "1.2.0"]
    assert get(app)[:2] == (200, "1.2.0")


def test_old_versions_that_cannot_be_removed_now_leave_the_app_running_without_an_error(
    feed: ReleaseFeed, app_factory: Callable[..., App]
) -> None:
    """The versions folder turned read-only (chattr +i: even for root) while 1.2.0 was on
    probation: 1.0.0 cannot be pruned when it ends. That is logged; the status stays clean
    and the pruning is done at a later probation's end."""
    from test_faults import _immutable

    publish_version(feed, "1.0.0")
    app = app_factory(keep_versions=2, probation_seconds=2.0)
    wait_for(running(app, "1.0.0"))
    over = lambda: app.store.load_state().probation_until is None  # noqa: E731
    publish_version(feed, "1.1.0")
    assert app.updater.request(Command.CHECK).active == "1.1.0"
    wait_for(over, what="1.1.0's probation over")
    publish_version(feed, "1.2.0")
    assert app.updater.request(Command.CHECK).active == "1.2.0"
    versions = app.store.versions_dir
    if not _immutable(versions, True):
        pytest.skip("chattr +i is not available here")
    try:
        wait_for(over, what="1.2.0's probation over")
        time.sleep(0.5)  # the pruning comes right after the save
        status = app.updater.status()
        assert (status.phase, status.active, status.error) == (Phase.RUNNING, "1.2.0", None)
        assert app.store.installed() == ["1.0.0", "1.1.0", "1.2.0"]
    finally:
        _immutable(versions, False)
    assert get(app)[:2] == (200, "1.2.0")
    publish_version(feed, "1.3.0")
    assert app.updater.request(Command.CHECK).active == "1.3.0"
    wait_for(lambda: app.store.installed() == ["1.2.0", "1.3.0"], what="pruned at last")
